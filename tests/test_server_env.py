"""What a spawned server inherits from the gateway's environment (issue 13, defect 7): exactly
the variables the README lists, plus its config's `env`; no other variable of the gateway's
environment (a secret especially) reaches it."""
from __future__ import annotations

import json
import re
import time

from gateway import PY, ROOT, SERVERS, LineClient, write_config

SECRETS = {"MY_SECRET": "s3cret-value", "AWS_SECRET_ACCESS_KEY": "aws-secret", "GITHUB_TOKEN": "ghp_secret",
           "LC_SECRET": "smuggled-as-a-locale", "LC_TERMINAL": "iTerm2",
           "PYTHONSTARTUP": "/nonexistent/startup.py", "http_proxy": "http://user:pw@proxy:3128"}
# Set in the gateway's environment whether listed or not: what is passed must be what is listed.
CANDIDATES = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "LC_ALL", "LC_ADDRESS",
              "LC_COLLATE", "LC_CTYPE", "LC_IDENTIFICATION", "LC_MEASUREMENT", "LC_MESSAGES", "LC_MONETARY",
              "LC_NAME", "LC_NUMERIC", "LC_PAPER", "LC_TELEPHONE", "LC_TIME", "TMPDIR", "TZ", "PYTHONUNBUFFERED",
              "SYSTEMROOT", "COMSPEC", "EDITOR", "DISPLAY", "SSH_AUTH_SOCK", "XDG_RUNTIME_DIR")


def readme_inherited() -> list[str]:
    """The variable names in the README's sentence on what servers inherit."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("Servers inherit only")
    paragraph = text[start:text.index("must be named in `env`", start)]
    return re.findall(r"`([A-Z][A-Z_]*[A-Z])`", paragraph)


def test_readme_lists_each_locale_category_by_name():
    names = readme_inherited()
    assert len(names) == len(set(names)) and {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "LC_TIME",
                                              "TMPDIR", "TZ"} <= set(names)


def test_a_server_sees_exactly_the_listed_variables_and_its_env(tmp_path):
    listed = readme_inherited()
    home = tmp_path / "home"
    home.mkdir()
    given = {name: f"value-of-{name}" for name in {*listed, *CANDIDATES}}
    given.update({name: "C.UTF-8" for name in given if name == "LANG" or name.startswith("LC_")})
    given.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(tmp_path),
                  "TZ": "UTC", "LANGUAGE": "en", "PYTHONUNBUFFERED": "1"})
    out = tmp_path / "env.json"
    config = write_config(tmp_path, {"env": {"command": PY, "args": [str(SERVERS / "envdump.py"), "--out", str(out)],
                                             "env": {"GIVEN": "from-config", "PASSED_ON": "${MY_SECRET}"}}})
    argv = [PY, "-m", "wire_gateway", "stdio", "--config", str(config), "--server", "env"]
    client = LineClient(argv, log_path=tmp_path / "gateway.log", env={**given, **SECRETS})
    client.other = []
    try:
        assert client.initialize()["result"]["serverInfo"]["name"] == "envdump"
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = json.loads(out.read_text())
    finally:
        assert client.close() == 0, client.log_text()
    expected = {**{name: given[name] for name in listed}, "GIVEN": "from-config", "PASSED_ON": SECRETS["MY_SECRET"]}
    assert seen == expected, (f"missing: {sorted(set(expected) - set(seen))}; "
                              f"not listed: {sorted(set(seen) - set(expected))}")
