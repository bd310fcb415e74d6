"""ztmesh audit."""
