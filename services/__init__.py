"""ztmesh: a Zero Trust policy decision point built as a mesh of gRPC services."""
