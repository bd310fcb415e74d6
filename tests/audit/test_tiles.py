"""The tree stored as tiles (tiles.py) against merkle.py's one-row-per-node model: every stored node read
back from tiles is the node, an appender's edge grows the same tree batch by batch, and what is missing
or does not continue the tree is an error, never another hash."""

from __future__ import annotations

import hashlib
import random

import pytest

from ztmesh.audit import merkle, tiles


def leaves(count: int, start: int = 0) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(start, start + count)]


def widest(rows: dict[tuple[int, int, int], bytes]):  # type: ignore[no-untyped-def]
    """A loader over stored rows as the PostgreSQL store reads them: the widest row of each tile at least as
    wide as asked, or (exact) the row of exactly that width."""

    def load(wanted, exact: bool = False):  # type: ignore[no-untyped-def]
        widths: dict[tuple[int, int], list[int]] = {}
        for level, tile, width in rows:
            widths.setdefault((level, tile), []).append(width)
        found = {}
        for (level, tile), width in wanted.items():
            fits = [w for w in widths.get((level, tile), []) if (w == width if exact else w >= width)]
            if fits:
                found[(level, tile)] = rows[(level, tile, max(fits))]
        return found

    return load


@pytest.mark.parametrize("size", [*range(1, 70), 255, 256, 257, 4095, 4096, 4097, 65_537])
def test_every_stored_node_reads_back_from_the_tiles(size: int) -> None:
    tree = merkle.MemoryNodes()
    tree.append(leaves(size))
    rows = {(level, tile, width): hashes for level, tile, width, hashes in tiles.tile_rows(tree.nodes)}
    ids = sorted(tree.nodes) if size < 5000 else random.Random(size).sample(sorted(tree.nodes), 3000)
    assert tiles.read_nodes(ids, widest(rows)) == [tree.nodes[i] for i in ids]
    assert len(rows) <= len(tree.nodes) // 14 + 8  # ~1/16 of a row per node: the point of tiles
    with pytest.raises(merkle.ProofError, match="not stored"):
        tiles.read_nodes([(0, size)], widest(rows))  # the leaf after the tree


def test_an_appenders_edge_grows_the_same_tree_batch_by_batch() -> None:
    rng = random.Random(3)
    reference = merkle.MemoryNodes()
    rows: dict[tuple[int, int, int], bytes] = {}
    load = widest(rows)
    for _ in range(160):
        size = reference.frontier.size
        edge = tiles.TileEdge(size, lambda wanted: load(wanted, exact=True))
        frontier = merkle.frontier_from(size, edge)
        assert frontier == reference.frontier
        batch = leaves(rng.choice([1, 2, 3, 15, 16, 17, 40, 255, 300]), size)
        _, nodes = merkle.append_leaves(frontier, batch)
        for level, tile, width, hashes in edge.extend(nodes):
            assert (level, tile, width) not in rows  # a row is written once: append-only
            rows[(level, tile, width)] = hashes
        reference.append(batch)
        assert edge.size == reference.frontier.size
    size = reference.frontier.size
    assert merkle.tree_root(size, merkle._ReadFunction(lambda ids: tiles.read_nodes(ids, load))) == (
        reference.frontier.root()
    )
    full = {(level, tile): hashes for level, tile, _, hashes in tiles.tile_rows(reference.nodes)}
    for (level, tile, width), hashes in rows.items():  # each level of a row, however narrow, is the full tile's
        assert len(hashes) == 32 * tiles.hashes_in(width)
        whole = tiles._levels(full[(level, tile)])
        assert all(part == whole[rise][: len(part)] for rise, part in enumerate(tiles._levels(hashes)))
    old = rng.randrange(1, size)
    proof = merkle.consistency_proof(old, size, merkle._ReadFunction(lambda ids: tiles.read_nodes(ids, load)))
    assert merkle.verify_consistency(old, size, merkle.tree_root(old, reference), reference.frontier.root(), proof)


def test_an_edge_missing_or_of_another_width_is_an_error() -> None:
    tree = merkle.MemoryNodes()
    tree.append(leaves(37))
    full = {(level, tile): hashes for level, tile, _, hashes in tiles.tile_rows(tree.nodes)}
    assert tiles.edge_tiles(37) == {(0, 2): 5, (1, 0): 2}  # 37 = 2·16 + 5
    missing = {(0, 2): full[(0, 2)]}
    forged_wider = {(0, 2): full[(0, 2)] + bytes(64), (1, 0): full[(1, 0)]}  # width 6: nobody appended it
    for found in (missing, forged_wider):
        edge = tiles.TileEdge(37, lambda wanted, found=found: found)
        with pytest.raises(merkle.ProofError, match="is not stored"):
            merkle.frontier_from(37, edge)


def test_nodes_that_do_not_continue_the_edge_are_refused() -> None:
    tree = merkle.MemoryNodes()
    tree.append(leaves(20))
    rows = {(level, tile): hashes for level, tile, _, hashes in tiles.tile_rows(tree.nodes)}
    edge = tiles.TileEdge(20, lambda wanted: {t: rows[t] for t in wanted})
    _, nodes = merkle.append_leaves(merkle.frontier_from(20, edge), leaves(3, 20))
    with pytest.raises(merkle.ProofError, match="does not continue"):
        edge.extend(nodes[1:])  # leaf 20 left out: leaf 21 would land in leaf 20's place


def test_a_whole_tree_with_a_hole_makes_no_tiles() -> None:
    tree = merkle.MemoryNodes()
    tree.append(leaves(40))
    del tree.nodes[(0, 17)]
    with pytest.raises(merkle.ProofError, match="has a gap"):
        tiles.tile_rows(tree.nodes)


def test_tiles_read_with_the_head_are_used_only_where_they_are_the_edge() -> None:
    tree = merkle.MemoryNodes()
    tree.append(leaves(37))
    full = {(level, tile): hashes for level, tile, _, hashes in tiles.tile_rows(tree.nodes)}
    loaded: list[dict] = []

    def load(wanted):  # type: ignore[no-untyped-def]
        loaded.append(dict(wanted))
        return {t: full[t] for t in wanted}  # the tree of 37's own tiles: the edge's widths

    # (0, 2) forged wider; (2, 0) and (3, 0), no width at all, are not on a tree of 37's edge.
    newest = {(0, 2): full[(0, 2)] + bytes(64), (1, 0): full[(1, 0)], (2, 0): bytes(32), (3, 0): b"x"}
    edge = tiles.TileEdge(37, load, newest)
    assert merkle.frontier_from(37, edge) == tree.frontier
    assert loaded == [{(0, 2): 5}]  # only the tile that was not the edge's width was read again
