"""`tpmtls completion {bash,zsh}`: generated from the parsers themselves (shtab), so every command
and option completes, in a real bash and a real zsh."""

from __future__ import annotations

import subprocess

import pytest

from support.commands import require


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> dict[str, str]:
    import sys

    out = {}
    for shell in ("bash", "zsh"):
        proc = subprocess.run([sys.executable, "-m", "tpmtls", "completion", shell], capture_output=True, text=True,
                              timeout=60, check=True)
        assert proc.stderr == ""
        path = tmp_path_factory.mktemp("completion") / f"tpmtls.{shell}"
        path.write_text(proc.stdout)
        out[shell] = str(path)
    return out


def _bash_complete(script: str, line: str, cwd=None) -> list[str]:
    """What bash offers after `line` (programmable completion, as on a terminal's TAB)."""
    words = line.split(" ")
    program = {"tpmtls": "_shtab_tpmtls", "tpmtls-push": "_shtab_tpmtls_push", "tpmtls-pull": "_shtab_tpmtls_pull"}
    driver = (f'source "{script}"; COMP_WORDS=({" ".join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}; '
              f'COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; {program[words[0]]} {words[0]} {words[-1]!r} '
              f'{words[-2]!r}; printf "%s\\n" "${{COMPREPLY[@]}}"')
    proc = subprocess.run(["bash", "-c", driver], capture_output=True, text=True, timeout=60, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return [w for w in proc.stdout.splitlines() if w]


def test_bash_completes_commands_options_choices_and_files(scripts, tmp_path):
    require("bash")
    from tpmtls.cli import build_parser

    script = scripts["bash"]
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert set(_bash_complete(script, "tpmtls ")) >= commands
    assert _bash_complete(script, "tpmtls key cr") == ["create"]
    assert set(_bash_complete(script, "tpmtls key create --alg ")) == {"ecc-p256", "ecc-p384", "rsa2048", "rsa3072"}
    assert "--format" in _bash_complete(script, "tpmtls doctor --f")
    assert _bash_complete(script, "tpmtls-push --dig") == ["--digestfile"]
    assert _bash_complete(script, "tpmtls-pull --form") == ["--format"]
    (tmp_path / "client.key").write_text("")
    assert _bash_complete(script, "tpmtls connect --key cl", cwd=tmp_path) == ["client.key"]


def test_zsh_script_loads_and_registers_all_three(scripts, tmp_path):
    require("zsh")
    script = scripts["zsh"]
    assert subprocess.run(["zsh", "-n", script], capture_output=True, timeout=60).returncode == 0
    proc = subprocess.run(["zsh", "-f", "-c", f'autoload -Uz compinit && compinit -u -d {tmp_path}/zcompdump && '
                           f'eval "$(<{script})" && print -- $_comps[tpmtls] $_comps[tpmtls-push] $_comps[tpmtls-pull]'],
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout.split()) == (0, ["_shtab_tpmtls", "_shtab_tpmtls_push", "_shtab_tpmtls_pull"]), \
        proc.stderr


def test_one_program_for_a_zsh_fpath_file(cli):
    out = cli("completion", "zsh", "--program", "tpmtls-push").stdout
    assert out.startswith("#compdef tpmtls-push\n") and "_shtab_tpmtls_pull" not in out
