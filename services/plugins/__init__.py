"""ztmesh plugins."""
