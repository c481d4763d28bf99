"""Argument detectors: values in a tool call that would turn into a command, a path outside the
sandbox, a request to an internal address or an SQL statement of the attacker's (docs/guardrails.md).

They judge shapes, not topics. A metacharacter counts when a command follows it (`; rm -rf /`,
`| sh`, `$(curl ...)`), so prose with a semicolon passes; a quote counts when it breaks out of
a literal into SQL (`' OR '1'='1`), so a plain query (`SELECT name FROM users WHERE id = 3`)
and a name like O'Reilly pass. Each rule's line is written next to it.

Every check starts from a literal that `str.find` or a regex with a literal first character finds
in C (`;`, `'`, `://`, `..`, `union`), so strings without one cost a few `in` tests.
"""
from __future__ import annotations

import ipaddress
import re
import unicodedata
from urllib.parse import unquote

from wire_gateway.guardrails.detectors._text import lowered, merged
from wire_gateway.guardrails.detectors.base import Detector, Span

_rx = re.compile

# ---------------------------------------------------------------------------------------------
# shell_injection
#
# A separator (; && || | & newline, or their %-encodings), a command substitution ($(...) or
# backticks) or a redirection, followed by a command an attacker runs: recon (whoami, id, uname),
# fetch and connect (curl, wget, nc, telnet, ping, nslookup), shells and interpreters with inline
# code (sh, bash -c, python -c, perl -e), rm -rf, reading a file by path (cat /etc/passwd), sleep N.
# Build and everyday commands (cd, make, npm, grep, ls, echo) are not in the list, so `cd build &&
# make` and `ps aux | grep nginx` pass. Code (a string starting with #! or holding a ``` fence)
# only fires on the unambiguous shapes: piping into a shell, /dev/tcp, substitution of a fetch,
# redirection into a sensitive path. Backticks fire when glued to a word (name`id`), when they are
# the whole value, or when they hold a pipe into a shell: markdown inline code in prose passes.
_WS = r"(?:\s+|\$\{ifs\}|\$ifs\b|%20|%09)"
# command -> what must follow its name for it to count as a command
_RECON = r"(?=\s*(?:[;&|`)#>\n]|\Z|\s-[a-z]))"
_FETCH = rf"{_WS}(?:-|/|[\w.-]+\.[a-z]|https?:|\$|'|\"|\d)"
_READ = (rf"{_WS}(?:-\w+\s+)?(?:/|~|\.{{1,2}}[/\\]|[a-z]:\\|\$|[\w.-]+\.(?:txt|conf|cfg|ini|log|env|pem|key|sh|py|json"
         r"|ya?ml|xml|php|db|sql|bak)\b)")
_SHELL = r"(?=\s*(?:\Z|[;&|)`\n])|\s+-[ci]|\s+/|\s+<)"
_COMMANDS: dict[str, str] = {
    **dict.fromkeys(("whoami", "uname", "ifconfig", "ipconfig", "printenv", "id", "hostname"), _RECON),
    **dict.fromkeys(("curl", "wget", "nc", "ncat", "netcat", "socat", "telnet", "nslookup", "dig", "ping", "ssh", "scp",
                     "tftp", "certutil", "bitsadmin", "powershell", "pwsh", "cmd", "cmd.exe"), _FETCH),
    **dict.fromkeys(("cat", "head", "tail", "more", "less", "tac", "nl", "strings", "base64", "xxd", "od", "type"),
                    _READ),
    **dict.fromkeys(("sh", "bash", "zsh", "dash", "ksh", "csh", "tcsh"), _SHELL),
    **dict.fromkeys(("python", "python2", "python3", "perl", "ruby", "php", "node", "lua"), rf"{_WS}-[cer]\b"),
    **dict.fromkeys(("chmod", "chown"), rf"{_WS}[+\w]"),
    **dict.fromkeys(("mkfifo", "shutdown", "reboot", "xterm"), ""),
    **dict.fromkeys(("eval", "exec", "crontab", "useradd", "nohup"), r"\s"),
    "net": rf"{_WS}(?:user|localgroup|view)\b", "rm": rf"{_WS}(?:-[a-z]*[rf]|/)", "sleep": rf"{_WS}\d",
    "tee": rf"{_WS}(?:-a\s+)?(?:/etc/|/root/|~/\.|/var/spool/cron|/usr/|/bin/)", "su": r"\s+-", "dd": r"\s+if=",
    "kill": r"\s+-", "export": r"\s+\w+=",
}
_TAIL = {name: _rx(tail) for name, tail in _COMMANDS.items()}


def _by_first_letter(words: list[str]) -> str:
    """An alternation of `words` grouped by first letter (longest first within a group), so `re`
    compares a few characters per candidate instead of every word: the list is tried after every
    ';' and newline of a string."""
    groups: dict[str, list[str]] = {}
    for w in words:
        groups.setdefault(w[0], []).append(re.escape(w[1:]))
    return "|".join(re.escape(head) + "(?:" + "|".join(sorted(rests, key=len, reverse=True)) + ")"
                    for head, rests in sorted(groups.items()))


# A separator, then a command name; the name's tail is checked on the candidates (`_command`).
_CMD = rf"(?:sudo\s+)?(?P<cmd>{_by_first_letter(list(_COMMANDS))})(?![\w-])"
_R_SEP: dict[str, re.Pattern[str]] = {
    ";": _rx(rf";\s*\(?\s*{_CMD}"),
    "&": _rx(rf"&&?\s*\(?\s*{_CMD}"),
    "|": _rx(rf"\|\|?\s*\(?\s*{_CMD}"),
    "\n": _rx(rf"\n\s*{_CMD}"),
    "\r": _rx(rf"\r\s*{_CMD}"),
    "%": _rx(rf"%(?:0a|0d|3b|26|7c)(?:%20|\s)*{_CMD}"),
}
_R_BACKTICK = _rx(rf"`\s*{_CMD}")


def _command(low: str, m: re.Match[str]) -> int | None:
    """The end of the command whose name `m` matched, if what follows the name makes it one."""
    tail = _TAIL[m.group("cmd")].match(low, m.end())
    return tail.end() if tail is not None else None


_R_SUBST = _rx(r"\$\(\s*(?:sudo\s+)?(?:curl|wget|whoami|id|uname|cat|nc|ncat|bash|sh|python[23]?|perl|rm|echo|base64"
               r"|hostname|printenv|env|ls|ping|sleep|nslookup|dig|head|tail|xxd|openssl|find|pwd)\b")
_R_PIPE_SHELL = _rx(r"\|\s*(?:sudo\s+)?(?:sh|bash|zsh|dash|ksh)\b(?!\s*\|)(?!\s*[-\w]*\s*\|)")
_R_FETCH_SUBST = _rx(r"\$\(\s*(?:curl|wget)\b")
_R_REDIRECT = _rx(r">>?\s*(?:/etc/|/root/|/var/spool/cron|/boot/|/bin/|/usr/s?bin/|~/\.(?:ssh|bashrc|profile"
                  r"|bash_profile|zshrc)|/home/[\w.-]+/\.(?:ssh|bashrc|profile)|/dev/(?:tcp|udp)/)")
_R_REDIRECT_KEYS = _rx(r">>?\s*[\w.~/-]{0,80}authorized_keys")
_R_DEVTCP = _rx(r"/dev/(?:tcp|udp)/[\w.-]+/\d+")
_SEP_CHARS = ";&|\n\r%$`>/"


def _shell_injection(text: str, key: str | None) -> list[Span]:
    for c in _SEP_CHARS:
        if c in text:
            break
    else:
        return []
    low = lowered(text)
    code = low.startswith("#!") or "```" in low
    found: dict[int, int] = {}
    if not code:
        for sep, rx in _R_SEP.items():
            if sep in low:
                for m in rx.finditer(low):
                    end = _command(low, m)
                    if end is not None and not (sep == "|" and _table_cell(low, end)):
                        found[m.start()] = end
        if "$(" in low:
            for m in _R_SUBST.finditer(low):
                found[m.start()] = m.end()
        if "`" in low:
            stripped = low.strip()
            for m in _R_BACKTICK.finditer(low):
                close = low.find("`", m.end(), m.end() + 200)
                if close < 0 or "\n" in low[m.end():close] or _command(low, m) is None:
                    continue
                s = m.start()
                glued = s > 0 and not low[s - 1].isspace() and low[s - 1] not in "([{'\""
                if glued or low[s:close + 1] == stripped or _R_PIPE_SHELL.search(low, m.end(), close):
                    found[s] = close + 1
    else:
        if "$(" in low:
            for m in _R_FETCH_SUBST.finditer(low):
                found[m.start()] = m.end()
    if "|" in low:
        for m in _R_PIPE_SHELL.finditer(low):
            if not _table_cell(low, m.end()):
                found[m.start()] = m.end()
    if ">" in low:
        for m in _R_REDIRECT.finditer(low):
            found[m.start()] = m.end()
        if "authorized_keys" in low:
            for m in _R_REDIRECT_KEYS.finditer(low):
                found[m.start()] = m.end()
    if "/dev/" in low:
        for m in _R_DEVTCP.finditer(low):
            found[m.start()] = m.end()
    return merged("shell_injection", found)


def _table_cell(low: str, end: int) -> bool:
    """A markdown table cell (`| bash | 5.2 |`): the next character on the line is another pipe."""
    j = end
    while j < len(low) and low[j] in " \t":
        j += 1
    return j < len(low) and low[j] == "|"


# ---------------------------------------------------------------------------------------------
# path_traversal
#
# Encoded traversal (%2e%2e%2f, ..%2f, %252e, ..%c0%af, ....//, ..;/) fires anywhere: nothing
# legitimate encodes a parent step. A plain ../ or ..\ fires when the value is a path (one token,
# no whitespace) that climbs above its starting directory (src/../lib stays inside and passes;
# ../../etc/hosts does not), or anywhere when a sensitive target follows it. Absolute paths to
# secrets fire anywhere, prose included (/etc/passwd, /etc/shadow, ~/.ssh/, /proc/self/environ,
# ~/.aws/credentials, C:\Windows\System32): an argument naming them is worth a look whatever
# the sentence around it says. Source imports in code (`from '../../lib/x'`) are prose-shaped and
# pass unless they reach a sensitive path.
_ENC_PCT = _rx(r"%(?:(?:25)?2e(?:%(?:25)?2e(?:%(?:25)?(?:2f|5c)|[/\\])|\.)|c0%ae%c0%ae|uff0e%uff0e)")
_ENC_DOT = _rx(r"\.(?:\.(?:%(?:25)?(?:2f|5c)|%c0%af|%c1%9c|%c0%2f|;/)|%(?:25)?2e|\.{2,3}[/\\]{1,2}\.{2,4}[/\\])")
_SENSITIVE = (r"(?:etc/(?:passwd|shadow|sudoers|master\.passwd|gshadow)|proc/self/|\.ssh/|\.ssh\b|root/\."
              r"|var/run/secrets/"
              r"|\.aws/credentials|\.docker/config\.json|\.kube/config|\.netrc|\.git-credentials|\.pgpass"
              r"|windows/system32|windows/win\.ini|boot\.ini|winnt/)")
_R_SENSITIVE = _rx(rf"/{_SENSITIVE}")
_TOKEN_STOP = frozenset(" \t\r\n\"'`<>()[]{},;=")
_R_TOKEN_END = _rx(r"[^\s\"'`<>()\[\]{},;]*")


def _escapes(path: str) -> bool:
    """A relative path that climbs above its starting directory once normalised."""
    depth = 0
    for seg in path.replace("\\", "/").split("/"):
        if seg == "..":
            depth -= 1
            if depth < 0:
                return True
        elif seg not in ("", "."):
            depth += 1
    return False


def _path_traversal(text: str, key: str | None) -> list[Span]:
    low = lowered(text)
    found: dict[int, int] = {}
    if "%" in low:
        for m in _ENC_PCT.finditer(low):
            found[m.start()] = m.end()
    if ".." in low or ".%" in low:
        for m in _ENC_DOT.finditer(low):
            found[m.start()] = m.end()
    backslash = "\\" in low
    norm = low.replace("\\", "/") if backslash else low
    if backslash or "/" in low:
        for m in _R_SENSITIVE.finditer(norm):
            start = m.start()
            while start > 0 and m.start() - start < 200 and norm[start - 1] not in _TOKEN_STOP:
                start -= 1
            found[start] = m.end()
    if ".." in norm and len(norm) <= 4096:     # a path is one short token
        token = norm.strip()
        if token and not any(c.isspace() for c in token) and _escapes(token.split("?")[0].split("#")[0]):
            start = len(norm) - len(norm.lstrip())
            found[start] = start + len(token)
    return merged("path_traversal", found)


# ---------------------------------------------------------------------------------------------
# ssrf_url
#
# URLs (found by "://") whose host is internal: loopback, 0.0.0.0/8, link-local (169.254/16, the
# cloud metadata address), RFC 1918, carrier-grade NAT 100.64/10 (Alibaba's metadata address),
# IPv6 ::1, fc00::/7, fe80::/10 and IPv4-mapped forms; localhost, *.localhost, *.internal
# (metadata.google.internal), names that resolve to loopback (localtest.me, lvh.me) and
# nip.io/sslip.io names carrying an internal address. IPv4 in decimal, hex, octal or short form
# (2130706433, 0x7f.1, 0177.0.0.1, 127.1) is decoded as inet_aton does. file:// gopher:// dict://
# ldap:// tftp:// jar: netdoc: always fire. Only web schemes are checked for hosts (http, https,
# ws, wss, ftp): a database connection string (postgres://...@localhost) is the secrets
# detectors' business. Public hosts and IPs in a path (example.com/127.0.0.1) pass.
_ALWAYS = frozenset(("file", "gopher", "dict", "ldap", "ldaps", "tftp", "jar", "netdoc", "phar", "expect"))
_WEB = frozenset(("http", "https", "ws", "wss", "ftp", "ftps"))
_R_AUTHORITY = _rx(r"[^\s/?#\\\"'<>`]*")
_LOOPBACK_NAMES = frozenset(("localhost", "localtest.me", "lvh.me", "vcap.me", "instance-data", "metadata"))
# (version, first, last) as integers: comparing ints is 20 times cheaper than `ip in network`
_INTERNAL_RANGES = tuple((net.version, int(net.network_address), int(net.broadcast_address)) for net in (
    ipaddress.ip_network(n) for n in ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
                                      "172.16.0.0/12", "192.168.0.0/16", "::1/128", "::/128", "fc00::/7", "fe80::/10")))
_R_INET_PART = _rx(r"0x[0-9a-f]*|0[0-7]*|[1-9][0-9]*")
_R_EMBEDDED_IP = _rx(r"(?:^|[.-])(\d{1,3}[.-]\d{1,3}[.-]\d{1,3}[.-]\d{1,3})\.(?:nip\.io|sslip\.io|xip\.io)$")


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    nums = []
    for p in parts:
        if not _R_INET_PART.fullmatch(p):
            return None
        if p.startswith("0x"):
            nums.append(int(p[2:] or "0", 16))
        else:
            nums.append(int(p, 8) if p.startswith("0") and len(p) > 1 else int(p))
    value = 0
    for n in nums[:-1]:
        if n > 255:
            return None
        value = value << 8 | n
    last_bits = 8 * (5 - len(nums))
    if nums[-1] >= 1 << last_bits:
        return None
    return ipaddress.IPv4Address(value << last_bits | nums[-1])


def _internal_host(host: str) -> bool:
    if "%" in host:
        host = unquote(host)
    if not host.isascii():
        host = unicodedata.normalize("NFKC", host).replace("\u3002", ".")
    host = host.rstrip(".")
    if host.startswith("["):
        host = host[1:].split("]", 1)[0].split("%", 1)[0]
    if not host:
        return False
    if host in _LOOPBACK_NAMES or host.endswith((".localhost", ".internal")):
        return True
    if not (host[0].isdigit() or ":" in host or host.endswith((".nip.io", ".sslip.io", ".xip.io"))):
        return False
    embedded = _R_EMBEDDED_IP.search(host)
    if embedded:
        host = embedded.group(1).replace("-", ".")
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = _inet_aton(host) if host[0].isdigit() else None
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    version, value = ip.version, int(ip)
    for v, first, last in _INTERNAL_RANGES:
        if v == version and first <= value <= last:
            return True
    return False


def _ssrf_url(text: str, key: str | None) -> list[Span]:
    if "://" not in text:
        return []
    low = lowered(text)
    out = []
    i = low.find("://")
    while i >= 0:
        start = i
        while start > 0 and i - start < 8 and "a" <= low[start - 1] <= "z":
            start -= 1
        scheme = low[start:i]
        rest = i + 3
        if scheme in _ALWAYS:
            tail = _R_TOKEN_END.match(low, rest)
            out.append(Span("ssrf_url", start, tail.end() if tail else rest))
        elif scheme in _WEB:
            auth = _R_AUTHORITY.match(low, rest)
            end = auth.end() if auth else rest
            if _internal_host(_host(low[rest:end])):
                out.append(Span("ssrf_url", start, end))
        i = low.find("://", rest)
    return out


def _host(authority: str) -> str:
    host = authority.rsplit("@", 1)[-1]
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    head, sep, port = host.rpartition(":")
    return head if sep and (port.isdigit() or not port) else host


# ---------------------------------------------------------------------------------------------
# sql_injection
#
# The line: a payload breaks out of a value. It fires on a quote that closes a literal and goes on
# in SQL (' OR '1'='1, admin'--, '); DROP TABLE, ' UNION SELECT, ' AND SLEEP(5)); on a tautology
# anywhere (OR 1=1, OR 'a'='a'); on a number followed by SQL when the number is the whole start of
# the value (-1 UNION SELECT, 5; DROP TABLE); on UNION SELECT with probing columns (NULL, @@version,
# information_schema); on time-based functions (SLEEP(n) after a boolean or select, pg_sleep,
# WAITFOR DELAY, BENCHMARK); on xp_cmdshell. A whole query as an argument (`SELECT name FROM users
# WHERE id = 3`, a UNION of two tables, a migration with several statements) passes, as do prose
# about SQL injection, apostrophes (O'Reilly, the users' accounts) and time.sleep(5) in code.
# Documentation that quotes a literal payload fires: the detector sees the payload, not the intent.
_COND = (r"(?:\(?\s*(?P<q>['\"]?)(?P<v>\w*)(?P=q)\s*(?:=|like)\s*(?P=q)(?P=v)(?P=q)?(?!\w)"
         r"|\d+\s*=\s*(?:convert|cast|\(?\s*select)\b|\d+\s*(?:=|<>|!=|>=|<=|<|>)\s*\d+|true\b|false\b|not\s+\d|\(?\s*select\b|(?:sleep|benchmark|exists|ascii"
         r"|substr(?:ing)?|char|length|extractvalue|updatexml|convert|cast|if)\s*\(|\d+\s*(?:--|#|/\*)|@@"
         r"|(?:user|version|database)\s*\(\)|'[^']{0,20}'\s*(?:=|like)\s*'|\w+\s*(?:=|like)\s*'?\w*'?\s*(?:--|#|/\*))")
_STACK = (r"(?:drop\s+(?:table|database|schema|user)|delete\s+from|truncate\s+(?:table\s+)?\w|insert\s+into"
          r"|update\s+\w+\s+set"
          r"|alter\s+(?:table|user)|create\s+(?:table|user|login)|exec(?:ute)?\s|shutdown\b|grant\s|declare\s+@|select\s)")
_SP = r"(?:\s|/\*.*?\*/)+"
_AFTER_QUOTE = (rf"\s*\)*\s*(?:(?:or|and|\|\||&&|xor)\s+{_COND}|union{_SP}(?:all{_SP})?select\b|;\s*{_STACK}"
                r"|(?:--|#|/\*)|order\s+by\s+\d|group\s+by\s+\w+\s+having|procedure\s+analyse|into\s+(?:out|dump)file"
                r"|\+\s*(?:select|sleep|convert)\b|\|\|\s*\(?\s*select\b)")
_R_QUOTE = {"'": _rx("'" + _AFTER_QUOTE), '"': _rx('"' + _AFTER_QUOTE)}
_R_TAUTOLOGY = _rx(r"or(?<!\wor)\s+\(?\s*(?P<q>['\"]?)(?P<v>\w*)(?P=q)\s*=\s*(?P=q)(?P=v)(?P=q)?(?!\w)")
_R_NUMERIC = _rx(rf"\s*-?\d+\s*\)?\s*(?:(?:or|and)\s+(?:\d+\s*(?:=|<|>)|\(\s*select\b)|union{_SP}(?:all{_SP})?select\b"
                 rf"|;\s*{_STACK})")
_R_UNION = _rx(rf"union{_SP}(?:all{_SP})?select{_SP}(?:null\b|\d+\s*,|@@|user\(|version\(|database\(|concat"
               r"|group_concat"
               r"|load_file|table_name|column_name|char\(|[\w,\s]*from\s+information_schema)")
# time-based and command functions: (literal, regex from it, what must come right before or None)
_R_SLEEP_LEAD = _rx(r"(?:\b(?:and|or|select|if\s*\()|[,(;=]|\|\||&&|pg_)\s*\(?\s*$")
_TIME: tuple[tuple[str, re.Pattern[str], re.Pattern[str] | None], ...] = (
    ("sleep", _rx(r"sleep\s*\(\s*\d"), _R_SLEEP_LEAD),
    ("waitfor", _rx(r"waitfor\s+delay\s+'"), None),
    ("benchmark", _rx(r"benchmark\s*\(\s*\d{5,}"), None),
    ("dbms_", _rx(r"dbms_(?:pipe\.receive_message|lock\.sleep)"), None),
    ("xp_cmdshell", _rx(r"xp_cmdshell"), _rx(r"\bexec(?:ute)?\s+(?:master\.\.)?$")),
)


def _sql_injection(text: str, key: str | None) -> list[Span]:
    low = lowered(text)
    found: dict[int, int] = {}
    for q, rx in _R_QUOTE.items():
        if q in low:
            counted, odd = 0, False
            for m in rx.finditer(low):
                odd ^= low.count(q, counted, m.start() + 1) % 2 == 1
                counted = m.start() + 1
                if _breaks_out(low, m.start(), odd, m.group()):
                    found[m.start()] = m.end()
    if "=" in low:
        for m in _R_TAUTOLOGY.finditer(low):
            found[m.start()] = m.end()
    number = _R_NUMERIC.match(low) if low[:1].isdigit() or low[:1] in " -\t\n" else None
    if number is not None:
        found[number.start() + len(number.group()) - len(number.group().lstrip())] = number.end()
    if "union" in low:
        for m in _R_UNION.finditer(low):
            found[m.start()] = m.end()
    for literal, rx, lead in _TIME:
        if literal in low:
            for m in rx.finditer(low):
                start = m.start()
                if lead is not None:
                    before = lead.search(low, max(0, start - 30), start)
                    if before is None:
                        continue
                    start = before.start()
                found[start] = m.end()
    return merged("sql_injection", found)


def _breaks_out(low: str, pos: int, odd: bool, match: str) -> bool:
    """The quote at `pos` closes a literal the host query opened: it is an odd one (counting from
    the start), and when only a comment follows it, it is glued to a word (admin'--)."""
    if not odd:
        return False
    tail = match[1:].lstrip(" )")
    if tail.startswith(("--", "#", "/*")):
        return pos > 0 and (low[pos - 1].isalnum() or low[pos - 1] in "_")
    return True


DETECTORS: tuple[Detector, ...] = (
    Detector("shell_injection", "arguments", _shell_injection,
             "shell metacharacters followed by a command: ; rm -rf, | sh, $(curl ...), backticks, redirections"),
    Detector("path_traversal", "arguments", _path_traversal,
             "../ climbing out of the start directory, encoded traversal, paths to secret files"),
    Detector("ssrf_url", "arguments", _ssrf_url,
             "URLs to loopback, link-local, metadata and private addresses (any IPv4 encoding), file:// gopher://"),
    Detector("sql_injection", "arguments", _sql_injection,
             "quote break-outs into SQL, tautologies, UNION SELECT probes, stacked and time-based queries"),
)
