"""The one image: pinned base, unprivileged user, `ztmesh` entry point, and a build context (what
.dockerignore lets through) that holds everything the package needs to install and run."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s.manifests import REPO_ROOT, container, find

DOCKERFILE = REPO_ROOT / "Dockerfile"
PINNED = re.compile(r"^[^@\s]+:[^@\s]+@sha256:[0-9a-f]{64}$")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    rows = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def _build_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for word, arg in _instructions() if word == "ARG" and "=" in arg)


def test_every_base_image_is_pinned_by_tag_and_digest() -> None:
    args = _build_args()
    bases = [rest.split()[0] for word, rest in _instructions() if word == "FROM"]
    assert len(bases) == 2
    for base in bases:
        image = args.get(base.strip("${}"), base)
        assert PINNED.match(image), f"{image} is not pinned as name:tag@sha256:digest"


def test_runtime_stage_runs_unprivileged_with_the_ztmesh_entry_point() -> None:
    rows = _instructions()
    runtime = rows[max(i for i, (word, _) in enumerate(rows) if word == "FROM") :]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users == ["10001:10001"], "numeric non-root user, so runAsNonRoot can verify it"
    assert ("ENTRYPOINT", '["ztmesh"]') in runtime
    assert not [rest for word, rest in rows if word == "ADD"], "COPY only: ADD can fetch URLs and unpack archives"


def test_pods_run_as_the_image_user(render) -> None:  # type: ignore[no-untyped-def]
    for service in ("policy", "plugins", "keys", "audit"):
        deployment = find(render("prod"), "Deployment", service)
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
        assert container(deployment, service)["securityContext"]["readOnlyRootFilesystem"] is True


def _build_context() -> list[Path]:
    """Files `docker build` would send, by .dockerignore's rules (last matching pattern wins)."""
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sent = []
    for path in sorted(p for p in REPO_ROOT.rglob("*") if p.is_file() and ".git" not in p.parts):
        relative = path.relative_to(REPO_ROOT).as_posix()
        parts = relative.split("/")
        # A pattern that matches a folder covers everything inside it.
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        included = True
        for pattern in patterns:
            body = pattern.lstrip("!").rstrip("/")
            anywhere = body.startswith("**/") and any(fnmatch.fnmatch(part, body[3:]) for part in parts)
            if anywhere or any(fnmatch.fnmatch(c, body) for c in candidates):
                included = pattern.startswith("!")
        if included:
            sent.append(path)
    return sent


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_sensitive() -> None:
    sent = {p.relative_to(REPO_ROOT).as_posix() for p in _build_context()}
    copied = [rest.split()[:-1] for word, rest in _instructions() if word == "COPY" and "--from" not in rest]
    for sources in copied:
        for source in sources:
            assert any(s == source or s.startswith(source.rstrip("/") + "/") for s in sent), f"{source} not sent"
    assert not [
        s for s in sent if s.startswith(("certs/", "var/", "tests/", ".tools/")) or s.endswith((".key", ".pyc"))
    ]


@pytest.mark.slow
def test_package_from_the_build_context_installs_and_runs(tmp_path: Path) -> None:
    context = tmp_path / "context"
    for path in _build_context():
        target = context / path.relative_to(REPO_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    wheels = tmp_path / "wheels"
    # The same `pip install .` as the image, minus downloading dependencies already installed here.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(context),
        ],
        check=True,
        timeout=300,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    (wheel,) = wheels.glob("ztmesh-*.whl")
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    done = subprocess.run(
        [str(venv / "bin" / "ztmesh"), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import ztmesh.mesh.server as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=True,
    )
    assert where.stdout.startswith(str(venv)), "imported from the checkout instead of the installed package"
