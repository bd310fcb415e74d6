"""Shared plumbing for every ztmesh service: settings, mTLS, SPIFFE authorization, health,
metrics, logging and the server bootstrap. Written once; the four services build on it."""
