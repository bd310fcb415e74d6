"""Shared test support: real throwaway servers (`servers`) and mesh PKI/server fixtures (`mesh`)."""
