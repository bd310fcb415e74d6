"""The Merkle tree stored as tiles (after C2SP tlog-tiles and Go's sumdb/tlog `Tile`), of height 4: how the
PostgreSQL store keeps merkle.py's complete subtrees in ~25 times fewer rows.

Tile `(L, N)` of width `W` covers the `W` hashes of tree level `4·L` at indexes `16·N ... 16·N + W − 1` and
holds every complete node of its four levels: the W hashes of level 4·L, then the W/2 of level 4·L + 1
over them, the W/4 of 4·L + 2 and the W/8 of 4·L + 3 (integer halves), concatenated. So a stored node is
a slice of one tile row, no hashing (folding the W hashes instead made a proof hash ~90 times, a third of
its time). A tile is written again, wider, each time an append adds to it; the narrower rows stay
(append-only), and each level's part of a narrower row is a prefix of the wider one's.

Per record that is about 1/16 of a row instead of the two of one row per node (a batch of 500 writes
~35 rows, not ~1,000): PostgreSQL's per-row cost was a third of an Append's time under its lock.

The appender reads only the right edge: at each tile level the tile at the tree's size, of exactly the
width that size implies (`edge_tiles`), from which the frontier follows. A proof reads the widest row of
each tile it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from ztmesh.audit.merkle import HASH_SIZE, NodeId, ProofError

TILE_HEIGHT = 4
TILE_WIDTH = 1 << TILE_HEIGHT

TileId = tuple[int, int]  # (tile level L: tree levels 4·L .. 4·L + 3, tile index N)
TileRow = tuple[int, int, int, bytes]  # (L, N, width, the tile's hashes as laid out above)
# Reads tiles: {tile: the width it must have at least} -> {tile: its hashes}, the tiles not stored left out.
TileLoader = Callable[[Mapping[TileId, int]], Mapping[TileId, bytes]]


def hashes_in(width: int) -> int:
    """How many hashes a tile of `width` holds: its complete nodes on each of its levels."""
    return sum(width >> rise for rise in range(TILE_HEIGHT))


_WIDTH_OF = {hashes_in(w) * HASH_SIZE: w for w in range(1, TILE_WIDTH + 1)}  # row length -> width


def _place(node: NodeId) -> tuple[TileId, int, int]:
    """The tile holding `node`, the node's level within it (its rise over level 4·L), and its place there."""
    level, index = node
    tile_level, rise = divmod(level, TILE_HEIGHT)
    return (tile_level, index >> (TILE_HEIGHT - rise)), rise, index & ((TILE_WIDTH >> rise) - 1)


def _levels(hashes: bytes) -> list[list[bytes]]:
    """A tile row's hashes level by level (rise 0 first); a length no width has is a ProofError."""
    width = _WIDTH_OF.get(len(hashes))
    if width is None:
        raise ProofError(f"a Merkle tree tile of {len(hashes)} bytes is no tile")
    out, at = [], 0
    for rise in range(TILE_HEIGHT):
        count = width >> rise
        out.append([hashes[i : i + HASH_SIZE] for i in range(at, at + count * HASH_SIZE, HASH_SIZE)])
        at += count * HASH_SIZE
    return out


def tiles_needed(ids: Iterable[NodeId]) -> dict[TileId, int]:
    """The tiles the nodes `ids` lie in, each with the least width that holds all of them."""
    wanted: dict[TileId, int] = {}
    for node in ids:
        tile, rise, place = _place(node)
        wanted[tile] = max(wanted.get(tile, 0), (place + 1) << rise)
    return wanted


def nodes_from_tiles(ids: Sequence[NodeId], tiles: Mapping[TileId, bytes]) -> list[bytes]:
    """The hashes of `ids`, in order, from the tiles read for them; a node no tile holds is a ProofError
    (a store whose tree lost a row must say so, not prove something else)."""
    out = []
    for node in ids:
        tile, rise, place = _place(node)
        hashes = tiles.get(tile, b"")
        width = _WIDTH_OF.get(len(hashes), 0)
        if place >= width >> rise:
            raise ProofError(f"Merkle tree node {node} is not stored")
        at = (sum(width >> r for r in range(rise)) + place) * HASH_SIZE  # after the levels below its own
        out.append(hashes[at : at + HASH_SIZE])
    return out


def read_nodes(ids: Sequence[NodeId], load: TileLoader) -> list[bytes]:
    """merkle.NodeReader.read_nodes over a tile store: one load for all the tiles `ids` need."""
    return nodes_from_tiles(ids, load(tiles_needed(ids))) if ids else []


def edge_tiles(size: int) -> dict[TileId, int]:
    """The right edge of a tree of `size` leaves: at each tile level, the partly filled tile and its width
    (base-16 digits of `size`). The frontier lies in them, and an append extends them."""
    edge = {}
    tile_level = 0
    while size >> (tile_level * TILE_HEIGHT):
        width = (size >> (tile_level * TILE_HEIGHT)) & (TILE_WIDTH - 1)
        if width:
            edge[(tile_level, size >> ((tile_level + 1) * TILE_HEIGHT))] = width
        tile_level += 1
    return edge


class TileEdge:
    """An appender's view of the tiles at the tree's right edge, read once (`load`, exact widths) when
    first needed; `read_nodes` serves the frontier from them, `extend` turns an append's new nodes into
    the tile rows to write and moves the edge after them."""

    def __init__(self, size: int, load: TileLoader, known: Mapping[TileId, bytes] | None = None) -> None:
        self.size = size
        self._load = load
        self._known = known or {}  # tiles read already (with the head): used where they are the edge
        self._tiles: dict[TileId, bytes] | None = None

    def _edge(self) -> dict[TileId, bytes]:
        if self._tiles is None:
            wanted = edge_tiles(self.size)
            found = {t: h for t, h in self._known.items() if t in wanted and _WIDTH_OF.get(len(h)) == wanted[t]}
            missing = {t: width for t, width in wanted.items() if t not in found}
            if missing:
                found.update(self._load(missing))
            for tile, width in wanted.items():
                if _WIDTH_OF.get(len(found.get(tile, b""))) != width:
                    raise ProofError(f"Merkle tree tile {tile} of width {width} is not stored")
            self._tiles = found
        return self._tiles

    def read_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        return nodes_from_tiles(ids, self._edge())

    def extend(self, nodes: Iterable[tuple[NodeId, bytes]]) -> list[TileRow]:
        """The rows for the nodes an append completed (merkle.append_leaves' output, in its order: each
        level's new indexes ascending, continuing the edge)."""
        edge = self._edge()
        touched: dict[TileId, list[list[bytes]]] = {}
        leaves = 0
        for node, digest in nodes:
            leaves += node[0] == 0
            tile, rise, place = _place(node)
            levels = touched.get(tile)
            if levels is None:
                levels = touched[tile] = _levels(edge[tile]) if tile in edge else [[] for _ in range(TILE_HEIGHT)]
            if len(levels[rise]) != place:
                raise ProofError(f"Merkle tree node {node} does not continue tile {tile}")
            levels[rise].append(digest)
        self.size += leaves
        rows = [_row(tile, levels) for tile, levels in touched.items()]
        for tile_level, index, width, hashes in rows:  # each level's last tile written is its new edge
            for old in [t for t in edge if t[0] == tile_level]:
                del edge[old]
            if width < TILE_WIDTH:
                edge[(tile_level, index)] = hashes
        if set(edge_tiles(self.size)) != set(edge):
            raise ProofError(f"the tile edge does not match a tree of {self.size} leaves")
        return rows


def _row(tile: TileId, levels: list[list[bytes]]) -> TileRow:
    """A tile's row from its nodes level by level; a level missing a node its width completes is an error."""
    width = len(levels[0])
    if not 0 < width <= TILE_WIDTH or any(len(levels[rise]) != width >> rise for rise in range(TILE_HEIGHT)):
        raise ProofError(f"Merkle tree tile {tile} has a gap")
    return tile[0], tile[1], width, b"".join(h for level in levels for h in level)


def tile_rows(nodes: Mapping[NodeId, bytes]) -> list[TileRow]:
    """Every tile of a whole tree's stored nodes, at its full width (the bench's 10M-leaf tree, tests)."""
    by_tile: dict[TileId, list[dict[int, bytes]]] = {}
    for node, digest in nodes.items():
        tile, rise, place = _place(node)
        levels = by_tile.get(tile)
        if levels is None:
            levels = by_tile[tile] = [{} for _ in range(TILE_HEIGHT)]
        levels[rise][place] = digest
    rows = []
    for tile, found in sorted(by_tile.items()):
        try:  # a level of n nodes holds places 0..n-1, or one is missing
            rows.append(_row(tile, [[level[i] for i in range(len(level))] for level in found]))
        except KeyError:
            raise ProofError(f"Merkle tree tile {tile} has a gap") from None
    return rows
