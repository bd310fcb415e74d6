"""ztmesh keys."""
