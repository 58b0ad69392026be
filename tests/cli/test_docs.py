"""The documentation is the repository's own: every path it names exists, the environment table is
complete, the README stays a first page, and nothing cites notes that are not in the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from support import ROOT

DOCS = ROOT / "docs"
# Where tpmtls-made text lives: what a reader or maintainer of the repository sees.
_TOP_FILES = ("README.md", "CHANGELOG.md", "Makefile", "pyproject.toml", "setup.py", ".ci/run")
_TOP_DIRS = ("docs", "tpmtls", "tests", "benchmarks", "helpers")
_BINARY = {".so", ".png", ".json", ".pyc", ".tar", ".gz"}
# A repository path as text: `docs/README.md`, `tests/cli/test_docs.py::test_readme_is_a_first_page`,
# `helpers/`, `tpmtls/provider/*.c`.
_PATH = re.compile(r"(?<![\w./$~-])((?:tpmtls|tests|benchmarks|helpers|docs)/[\w./*@-]*)(?:::(\w+))?")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _text_files() -> list[Path]:
    files = [ROOT / name for name in _TOP_FILES if (ROOT / name).is_file()]
    for top in _TOP_DIRS:
        files += sorted(p for p in (ROOT / top).rglob("*")
                        if p.is_file() and p.suffix not in _BINARY and "__pycache__" not in p.parts)
    return files


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]


def _looks_like_a_path(text: str) -> bool:
    """A file (its last part has an extension), a directory (trailing slash) or a glob."""
    last = text.rstrip("/").rsplit("/", 1)[-1]
    return text.endswith("/") or "*" in text or ("." in last and not last.endswith("."))


def test_every_path_the_docs_and_code_mention_exists():
    missing = []
    for source in _text_files():
        for m in _PATH.finditer(source.read_text(errors="replace")):
            path, test_name = m.group(1).rstrip(".,;:"), m.group(2)
            if not _looks_like_a_path(path):
                continue  # e.g. the ratio label "tpmtls/sw"
            found = list(ROOT.glob(path)) if "*" in path else [ROOT / path] if (ROOT / path).exists() else []
            if not found:
                missing.append(f"{source.relative_to(ROOT)}: {path}")
            elif test_name and not any(re.search(rf"^\s*def {test_name}\(", f.read_text(), re.M) for f in found):
                missing.append(f"{source.relative_to(ROOT)}: {path}::{test_name} (no such test)")
    assert not missing, "mentioned but not in the repository:\n" + "\n".join(missing)


def test_every_markdown_link_resolves():
    broken = []
    for page in _markdown_files():
        for target in _LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to nothing:\n" + "\n".join(broken)


# A section named after a page: `docs/pairing.md, "How long it takes"` or `[trust.md](trust.md), 'Files'`.
_SECTION_REF = re.compile(r"((?:docs/)?[\w-]+\.md)\)?,\s+(?:\"([^\"]{1,100}?)\"|'([^'\n]{1,100}?)')")


def _headings(page: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in page.read_text().splitlines() if re.match(r"#+ ", line)}


def test_every_section_named_after_a_page_is_a_heading_there():
    """So a reference like docs/pairing.md, "How long it takes" keeps pointing at something."""
    wrong = []
    for source in _text_files():
        for m in _SECTION_REF.finditer(source.read_text(errors="replace")):
            name, section = m.group(1), " ".join(re.sub(r"\n\s*(#:?|\*)?\s*", " ", m.group(2) or m.group(3)).split())
            page = ROOT / name if name.startswith("docs/") else source.parent / name
            if not page.is_file():
                page = DOCS / name
            if not page.is_file() or section not in _headings(page):
                wrong.append(f"{source.relative_to(ROOT)}: {name}, {section!r}")
    assert not wrong, "no such section:\n" + "\n".join(wrong)


def test_the_docs_index_lists_every_page():
    index = (DOCS / "README.md").read_text()
    unlisted = [p.name for p in DOCS.glob("*.md") if p.name != "README.md" and f"]({p.name})" not in index]
    assert not unlisted, f"docs/README.md does not link {unlisted}"


def test_readme_is_a_first_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    first_sh = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert first_sh is not None
    commands = [line.split("#", 1)[0].strip() for line in first_sh.group(1).splitlines()]
    assert commands == ["make quickstart", "make test"], commands
    for link in ("docs/README.md", "docs/environment.md", "docs/cli.md", "LICENSE", "CHANGELOG.md"):
        assert f"]({link})" in readme, f"the README does not link {link}"


def test_docker_py_examples_live_where_a_daemon_test_runs_them():
    """Python blocks needing a TLS dockerd run only in tests/docker/test_daemon_client.py, which reads docs/daemon.md."""
    for page in DOCS.glob("*.md"):
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
        if page.name != "daemon.md":
            assert not [b for b in blocks if "docker_client" in b], f"docs/{page.name}: docker_client block"
    assert any("docker_client" in b for b in re.findall(r"```python\n(.*?)```", (DOCS / "daemon.md").read_text(), re.S))


# ---- the environment table --------------------------------------------------------------------

def _is_os_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (isinstance(node, ast.Name) and node.id == "environ")


def _literals(node: ast.AST, constants: dict[str, ast.AST]) -> list[str] | None:
    """The strings a literal, a tuple/list of literals, or a module constant holding one stands for."""
    if isinstance(node, ast.Name) and node.id in constants:
        node = constants[node.id]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                                                      for e in node.elts):
        return [e.value for e in node.elts]
    return None


def _string_choices(node: ast.AST, scope: ast.AST, constants: dict[str, ast.AST]) -> list[str] | None:
    """The variable names `node` can be: a literal or module constant, or a loop variable over literals."""
    found = _literals(node, constants)
    if found is not None and not isinstance(node, (ast.Tuple, ast.List)):
        return found
    if isinstance(node, ast.Name):
        for loop in ast.walk(scope):
            if isinstance(loop, ast.For) and isinstance(loop.target, ast.Name) and loop.target.id == node.id:
                return _literals(loop.iter, constants)
    return None


def _variables_read(tree: ast.Module, where: str) -> tuple[set[str], list[str]]:
    """(names read from os.environ / os.getenv, reads whose name cannot be told)."""
    names: set[str] = set()
    unknown: list[str] = []
    constants = {t.id: stmt.value for stmt in tree.body if isinstance(stmt, ast.Assign)
                 for t in stmt.targets if isinstance(t, ast.Name)}
    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]

    def scope_of(node: ast.AST) -> ast.AST:
        inside = [s for s in scopes if s.lineno <= node.lineno <= (s.end_lineno or s.lineno)]
        return min(inside, key=lambda s: (s.end_lineno or s.lineno) - s.lineno) if inside else tree

    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Call) and node.args:
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in ("get", "setdefault") and _is_os_environ(f.value):
                key = node.args[0]
            elif (isinstance(f, ast.Attribute) and f.attr == "getenv") or (isinstance(f, ast.Name) and f.id == "getenv"):
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_os_environ(node.value):
            key = node.slice
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) \
                and any(_is_os_environ(c) for c in node.comparators):
            key = node.left
        if key is None:
            continue
        choices = _string_choices(key, scope_of(node), constants)
        if choices is None:
            unknown.append(f"{where}:{node.lineno}")
        else:
            names.update(choices)
    return names, unknown


def _documented_variables() -> set[str]:
    text = (DOCS / "environment.md").read_text()
    section = text.split("## Read by tpmtls", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}


def test_the_environment_table_lists_every_variable_the_code_reads():
    read: set[str] = set()
    unknown: list[str] = []
    for path in sorted((ROOT / "tpmtls").rglob("*.py")):
        where = str(path.relative_to(ROOT))
        names, unsure = _variables_read(ast.parse(path.read_text(), where), where)
        read |= names
        unknown += unsure
    for path in sorted((ROOT / "tpmtls").rglob("*.c")):
        read |= set(re.findall(r'getenv\("(\w+)"\)', path.read_text()))
    assert not unknown, f"environment reads with a computed name (write the name literally): {unknown}"
    assert {"TPMTLS_TCTI", "DOCKER_HOST", "TSS2_LOG"} <= read, "the scan found too little to be trusted"
    undocumented = read - _documented_variables()
    assert not undocumented, f"read by the code, missing from docs/environment.md: {sorted(undocumented)}"


# ---- the project's own files --------------------------------------------------------------------

def _project_field(name: str) -> str:
    """A string field of pyproject.toml's [project] table (tomllib is 3.11+, tpmtls supports 3.10)."""
    project = (ROOT / "pyproject.toml").read_text().split("[project]", 1)[1].split("\n[", 1)[0]
    m = re.search(rf'^{name} = "([^"]*)"', project, re.M)
    assert m, f"pyproject.toml has no [project] {name}"
    return m.group(1)


def test_license_is_the_one_pyproject_declares():
    assert _project_field("license") == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text


def test_changelog_has_an_unreleased_section_and_the_released_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    version = _project_field("version")
    assert "\n## Unreleased\n" in changelog
    assert f"\n## {version} - " in changelog


# Project notes kept outside the repository are never cited from it, and the user's scenarios are
# named by what they are, not by internal numbers. (Patterns are split so this file does not match.)
_PRIVATE = [re.compile(p) for p in (
    r"\bDESIGN" + r"(\.md|\s*§|\s+section)", r"\bFIND" + r"INGS\b", r"\.\./" + r"shared\b", r"/work/" + r"shared\b",
    r"\b[Ss]ee" + r"ds? \d{3}\b", r"\b[Ii]ssu" + r"es? \d+\b",
)]


def test_nothing_cites_notes_outside_the_repository():
    found = []
    for source in _text_files():
        for number, line in enumerate(source.read_text(errors="replace").splitlines(), 1):
            if any(p.search(line) for p in _PRIVATE):
                found.append(f"{source.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "say what is meant, or cite docs/ instead:\n" + "\n".join(found)


# ---- commands the docs show that no other test runs -------------------------------------------

def test_the_pairing_fingerprint_command_in_the_docs_prints_the_agents_fingerprint(tmp_path):
    """docs/pairing.md tells the daemon's owner how to compute the fingerprint with openssl."""
    import datetime
    import subprocess

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from support.commands import require
    from tpmtls.enroll.store import key_fingerprint

    require("openssl")
    page = " ".join((DOCS / "pairing.md").read_text().split())
    command = re.search(r"`(openssl x509 -in STATE/pairing\.crt [^`]*sha256sum)`", page)
    assert command, "docs/pairing.md no longer shows the openssl fingerprint command"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pairing")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "pairing.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out = subprocess.run(["bash", "-o", "pipefail", "-c", command.group(1).replace("STATE", str(tmp_path))],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split()[0] == key_fingerprint(key.public_key())


def _unit_command(unit: str, instance: str) -> list[str]:
    """A helpers/ unit's ExecStart as systemd runs it: continuations joined, %i and Environment= defaults."""
    text = (ROOT / "helpers" / unit).read_text().replace("\\\n", " ")
    env = dict(kv.split("=", 1) for line in text.splitlines() if line.startswith("Environment=")
               for kv in line.split("=", 1)[1].split())
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    line = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), line.split("=", 1)[1].replace("%i", instance))
    return line.split()


def test_the_lifecycle_units_run_valid_commands():
    """The renewal and CRL timers' services (docs/renewal.md, docs/revocation.md); %f is the instance as a path."""
    from tpmtls.cli import build_parser

    argv = [a.replace("%f", "/etc/tpmtls/client.cert") for a in _unit_command("tpmtls-renew@.service", "")]
    args = build_parser().parse_args(argv[1:])
    assert (args.renew, args.if_due, args.cert_out, args.store) == (True, True, "/etc/tpmtls/client.cert", None)
    argv = [a.replace("%f", "/etc/tpmtls/ca") for a in _unit_command("tpmtls-ca-crl@.service", "etc-tpmtls-ca")]
    args = build_parser().parse_args(argv[1:])
    assert (args.dir, args.out, args.hours, args.force) == ("/etc/tpmtls/ca", "/etc/nginx/tpmtls/etc-tpmtls-ca.crl",
                                                           168.0, True)
    for unit in ("tpmtls-renew@.timer", "tpmtls-ca-crl@.timer"):
        assert "Persistent=true" in (ROOT / "helpers" / unit).read_text()


def test_the_systemd_units_the_docs_name_run_valid_commands():
    from tpmtls.cli import build_parser

    argv = _unit_command("tpmtls-proxy@.service", "registry.example:5000")
    assert argv[0].endswith("/tpmtls")
    args = build_parser().parse_args(argv[1:])
    assert (args.upstream, args.listen) == ("registry.example:5000", "fd://")  # the socket unit's port
    argv = _unit_command("tpmtls-enroll-agent.service", "")
    args = build_parser().parse_args(argv[1:])
    assert (str(args.ca), str(args.state)) == ("/etc/tpmtls/enroll/ca.crt", "/var/lib/tpmtls/enroll-agent")
    assert "--host=unix:///var/run/docker.sock" in args.dockerd_arg
    socket_unit = (ROOT / "helpers" / "tpmtls-enroll-agent.socket").read_text()
    assert re.search(r"^ListenStream=.*2376$", socket_unit, re.M), "docs/pairing.md says the agent owns port 2376"
