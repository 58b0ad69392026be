"""Doctor's look at Docker's credential helper: on the PATH, and named by Docker's config.json."""

from __future__ import annotations

import shutil

from .._files import read_json
from ..registry.credentials import docker_config_path
from .findings import FAILED, INFO, OK, WARNING, Finding

HELPER = "docker-credential-tpmtls"
NAME = "tpmtls"  # what config.json's credsStore / credHelpers say


def check() -> list[Finding]:
    """docker-credential-tpmtls where `docker login` will look (the PATH), and config.json's choice."""
    found = shutil.which(HELPER)
    config = docker_config_path()
    try:
        data = read_json(config)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as e:
        return [Finding("credentials", WARNING, str(config), f"{config}: cannot read Docker's config ({e}): "
                        "docker will not either; fix or remove it")]
    store = data.get("credsStore") == NAME
    helpers = data.get("credHelpers")
    if not isinstance(helpers, dict):
        helpers = {}
    registries = sorted(r for r, h in helpers.items() if h == NAME)
    used = ([f"credsStore of {config}"] if store else []) + ([f"credHelpers for {', '.join(registries)}"] if registries else [])
    if used and found is None:
        return [Finding("credentials", FAILED, HELPER,
                        f"{' and '.join(used)} name {NAME}, but {HELPER} is not on the PATH: docker login fails with "
                        f"'executable file not found in $PATH' (make install links it into /usr/local/bin)")]
    if used:
        return [Finding("credentials", OK, str(found), f"{HELPER} at {found}, used as {' and '.join(used)}")]
    if found is None:
        return [Finding("credentials", INFO, HELPER, f"{HELPER} is not on the PATH and {config} does not use it "
                        "(needed only to keep registry passwords sealed to the TPM: docs/credential-helper.md)")]
    return [Finding("credentials", INFO, str(found), f"{HELPER} at {found}; {config} does not use it: add "
                    f'"credsStore": "{NAME}" to keep registry passwords sealed to this TPM')]
