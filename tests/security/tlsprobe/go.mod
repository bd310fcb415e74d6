module ztmesh.local/tlsprobe

go 1.25
