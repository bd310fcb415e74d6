"""ztmesh policy."""
