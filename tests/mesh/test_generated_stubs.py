"""The committed stubs in services/_proto are exactly what `make proto` generates from proto/."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_the_proto_files(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    module.generate(tmp_path / "out")
    committed = {
        p.relative_to(ROOT / "services/_proto"): p.read_text()
        for p in (ROOT / "services/_proto").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    fresh = {p.relative_to(tmp_path / "out"): p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert sorted(map(str, committed)) == sorted(map(str, fresh)), "run `make proto`"
    stale = [str(name) for name, text in fresh.items() if committed[name] != text]
    assert not stale, f"stubs out of date, run `make proto`: {stale}"
