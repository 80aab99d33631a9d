"""
Every external tool the test suite looks up is installed by C{.ci/run}.

The suite finds its tools with C{shutil.which("x")} and helpers built on it
(C{require_tool("x")}, ...).  A tool that is on the developer's machine but
not in C{.ci/run} passes there and fails on a fresh CI machine (as
C{logrotate} did), so this test reads the suite's source, finds every
lookup, and checks that the package providing each tool is one C{.ci/run}
installs.  A lookup it cannot resolve to a tool name fails too: name the
tool literally, or in a module-level tuple the lookup loops over.
"""

from __future__ import annotations

import ast
import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CI_RUN = ROOT / ".ci" / "run"
SUITE = ROOT / "tests"

#: The Debian package that provides each tool (where the names differ, the
#: package, not the tool, is what .ci/run lists).
TOOL_PACKAGES = {
    "curl": "curl",
    "dnsmasq": "dnsmasq",
    "dovecot": "dovecot-core",
    "fail2ban-client": "fail2ban",
    "fail2ban-regex": "fail2ban",
    "fetchmail": "fetchmail",
    "haproxy": "haproxy",
    "ip": "iproute2",
    "kinit": "krb5-user",
    "ktutil": "krb5-user",
    "kvno": "krb5-user",
    "ldbsearch": "ldb-tools",
    "logrotate": "logrotate",
    "mpop": "mpop",
    "mutt": "mutt",
    "neomutt": "neomutt",
    "ntlm_auth": "winbind",
    "openssl": "openssl",
    "postfix": "postfix",
    "redis-server": "redis-server",
    "samba": "samba",
    "samba-tool": "samba",
    "script": "bsdutils",
    "slapadd": "slapd",
    "slapd": "slapd",
    "systemd-analyze": "systemd",
    "tcpdump": "tcpdump",
    "testssl": "testssl.sh",
    "testssl.sh": "testssl.sh",
    "tshark": "tshark",
    "unshare": "util-linux",
    "prlimit": "util-linux",
    "wbinfo": "winbind",
}
#: Debian's Essential packages are on every machine: .ci/run need not list them.
ESSENTIAL = {"bsdutils", "util-linux"}
#: Tools installed by pip: from the [test] extra, or into a virtualenv of their own.
PIP_TOOLS = {"getmail": "getmail6", "sslyze": "sslyze"}

#: shutil.which; the helpers that pass one of their parameters on to a lookup
#: are added as found: (module, function) -> index of the argument naming the tool.
LOOKUPS = {("shutil", "which"): 0}


# -- reading .ci/run -----------------------------------------------------------------


def apt_packages(text):
    """The APT_PACKAGES=( ... ) array of a .ci/run script."""
    match = re.search(r"^APT_PACKAGES=\((.*?)^\)", text, re.M | re.S)
    assert match, ".ci/run has no APT_PACKAGES=( ... ) array"
    body = re.sub(r"#[^\n]*", "", match.group(1))
    return set(body.split())


def pip_installed(text, setup_cfg):
    """What .ci/run installs with pip: the [test] extra and named packages."""
    names = set()
    for line in text.splitlines():
        if "pip install" not in line or line.lstrip().startswith("#"):
            continue
        names.update(re.findall(r"'([A-Za-z0-9_.-]+)[<>=!~ ]", line))
        if ".[test]" in line:
            parser = configparser.ConfigParser()
            parser.read_string(setup_cfg)
            extra = parser.get("options.extras_require", "test", fallback="")
            names.update(re.findall(r"^\s*([A-Za-z0-9_.-]+)", extra, re.M))
    return names


# -- finding the lookups ---------------------------------------------------------------


def _parents(tree):
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    return parents


def _called_name(call):
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _strings(node):
    """The strings of a literal tuple/list/set of strings, else None."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return [e.value for e in node.elts]
    return None


def _module_constants(tree):
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                node.targets[0], ast.Name):
            values = _strings(node.value)
            if values is not None:
                constants[node.targets[0].id] = values
    return constants


def _parametrized(function, name):
    """
    The literal strings C{@pytest.mark.parametrize} gives parameter C{name}
    of C{function}, or L{None}.
    """
    for decorator in function.decorator_list:
        if not (isinstance(decorator, ast.Call) and _called_name(decorator) == "parametrize"
                and len(decorator.args) >= 2 and isinstance(decorator.args[0], ast.Constant)):
            continue
        names = [n.strip() for n in str(decorator.args[0].value).split(",")]
        if name not in names or not isinstance(decorator.args[1], (ast.List, ast.Tuple)):
            continue
        index, values = names.index(name), []
        for case in decorator.args[1].elts:
            if isinstance(case, ast.Call) and _called_name(case) == "param":
                case = ast.Tuple(elts=case.args) if len(names) > 1 else case.args[0]
            item = case.elts[index] if len(names) > 1 and isinstance(
                case, (ast.Tuple, ast.List)) else case
            if not (isinstance(item, ast.Constant) and isinstance(item.value, str)):
                return None
            values.append(item.value)
        return values
    return None


def _resolve(arg, call, parents, constants):
    """
    @return: C{("tools", [names])}, C{("helper", (function_name, index))}
        when the argument is parameter C{index} of the enclosing function
        (its callers say which tool), or C{("unknown", None)}.
    """
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return "tools", [arg.value]
    if not isinstance(arg, ast.Name):
        return "unknown", None
    node = call
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.For, ast.comprehension)) and isinstance(
                node.target, ast.Name) and node.target.id == arg.id:
            values = _strings(node.iter)
            if values is None and isinstance(node.iter, ast.Name):
                values = constants.get(node.iter.id)
            return ("tools", values) if values is not None else ("unknown", None)
        if isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp):
            for generator in node.generators:
                found = _resolve_in_generator(arg, generator, constants)
                if found is not None:
                    return found
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            params = [a.arg for a in node.args.posonlyargs + node.args.args]
            if arg.id not in params:
                return "unknown", None
            values = _parametrized(node, arg.id)
            if values is not None:
                return "tools", values
            if node.name.startswith("test_"):
                return "unknown", None   # a fixture's value: cannot be told here
            return "helper", (node.name, params.index(arg.id))
    return "unknown", None


def _resolve_in_generator(arg, generator, constants):
    if isinstance(generator.target, ast.Name) and generator.target.id == arg.id:
        values = _strings(generator.iter)
        if values is None and isinstance(generator.iter, ast.Name):
            values = constants.get(generator.iter.id)
        return ("tools", values) if values is not None else ("unknown", None)
    return None


def _module_name(path):
    return path[:-3].replace("/", ".") if path.endswith(".py") else path


def _bindings(module, tree):
    """
    What the names of a module refer to: C{{local: (module, function)}} for
    functions it defines or imports, C{{alias: module}} for modules.
    """
    functions, modules = {}, {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions[node.name] = (module, node.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                local = alias.asname or alias.name
                functions.setdefault(local, (node.module, alias.name))
                modules.setdefault(local, f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                modules[alias.asname or alias.name] = alias.name
    return functions, modules


def _target(call, functions, modules):
    """The (module, function) a call reaches, or C{("", name)} when unknown."""
    func = call.func
    if isinstance(func, ast.Name):
        return functions.get(func.id, ("", func.id))
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return modules.get(func.value.id, ""), func.attr
    return "", _called_name(call)


def _lookup_calls(modules, lookups):
    """
    Every call of a lookup: (path, call, the argument naming the tool,
    parents, constants).  C{lookups} maps (module, function) to the index of
    that argument; C{shutil.which} is C{("shutil", "which")}.
    """
    for path, tree, parents, constants, functions, aliases in modules:
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            index = lookups.get(_target(call, functions, aliases))
            if index is None:
                continue
            if index < len(call.args) and not isinstance(call.args[index], ast.Starred):
                yield path, call, call.args[index], parents, constants


def find_lookups(sources):
    """
    Every tool looked up in C{sources} ({path: python source}).

    @return: C{(tools, unresolved)}: C{{tool: [where, ...]}} and a list of
        the places whose tool name could not be told.
    """
    modules = []
    for path, text in sources.items():
        tree = ast.parse(text, path)
        functions, aliases = _bindings(_module_name(path), tree)
        modules.append((path, tree, _parents(tree), _module_constants(tree), functions,
                        aliases))
    lookups = dict(LOOKUPS)
    while True:   # helpers of helpers, until nothing new
        found = dict(lookups)
        for path, call, arg, parents, constants in _lookup_calls(modules, lookups):
            kind, value = _resolve(arg, call, parents, constants)
            if kind == "helper":
                name, index = value
                found.setdefault((_module_name(path), name), index)
        if found == lookups:
            break
        lookups = found
    tools, unresolved = {}, []
    for path, call, arg, parents, constants in _lookup_calls(modules, lookups):
        where = f"{path}:{call.lineno}"
        kind, value = _resolve(arg, call, parents, constants)
        if kind == "tools":
            for tool in value:
                tools.setdefault(tool, []).append(where)
        elif kind == "unknown":
            unresolved.append(f"{where}: {ast.unparse(call)}")
    return tools, unresolved


def problems(tools, apt, pip):
    """What is wrong: tools with no known package, packages .ci/run lacks."""
    out = []
    for tool, places in sorted(tools.items()):
        if tool in PIP_TOOLS:
            if PIP_TOOLS[tool] not in pip:
                out.append(f"{tool} ({places[0]}): .ci/run does not pip-install "
                           f"{PIP_TOOLS[tool]}")
            continue
        package = TOOL_PACKAGES.get(tool)
        if package is None:
            out.append(f"{tool} ({places[0]}): no package known; add it to "
                       f"TOOL_PACKAGES here and to APT_PACKAGES in .ci/run")
        elif package not in apt and package not in ESSENTIAL:
            out.append(f"{tool} ({places[0]}): package {package} is not in "
                       f".ci/run's APT_PACKAGES")
    return out


def suite_sources():
    """The suite's Python files, without this one (it looks up the table's tools)."""
    here = Path(__file__).resolve()
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted(SUITE.rglob("*.py"))
            if p.resolve() != here}


# -- the suite against .ci/run ---------------------------------------------------------


def test_every_tool_the_suite_looks_up_is_installed_by_ci_run():
    tools, unresolved = find_lookups(suite_sources())
    assert not unresolved, "lookups whose tool cannot be told:\n" + "\n".join(unresolved)
    # the scan sees the lookups it must (a scan that found nothing would pass)
    assert {"curl", "fetchmail", "logrotate", "ntlm_auth", "samba-tool", "testssl.sh",
            "fail2ban-regex", "sslyze", "getmail"} <= set(tools)
    ci = CI_RUN.read_text()
    found = problems(tools, apt_packages(ci), pip_installed(ci, (ROOT / "setup.cfg").read_text()))
    assert not found, "\n".join(found)


def test_logrotate_is_installed_by_ci_run():
    assert "logrotate" in apt_packages(CI_RUN.read_text())


# -- the scanner and the checker on made-up sources ------------------------------------


MADE_UP = '''
import shutil

import pytest

from tests.integration.daemon import require_tool

TOOLS = ("alpha", "beta")

def require(tool):
    path = shutil.which(tool)
    return path

def strict(name):
    return require(name)

def missing_tools():
    return [t for t in TOOLS if shutil.which(t) is None]

def first():
    for name in ("gamma", "gamma.sh"):
        if shutil.which(name):
            return name

def uses():
    require_tool("delta")
    strict("epsilon")
    return shutil.which("zeta") or "/usr/sbin/zeta"

def run(daemon, program):
    return require_tool(program)

@pytest.mark.parametrize("mode, program", [("a", "eta"), pytest.param("b", "theta")])
def test_programs(mode, program):
    run(None, program)
'''

#: Another module with a function of the same name and another signature.
OTHER = '''
def run(daemon, password):
    return daemon

def test_other():
    run(None, "not-a-tool")
'''


def test_scanner_finds_every_form_of_lookup():
    daemon = (SUITE / "integration" / "daemon.py").read_text()
    tools, unresolved = find_lookups({"tests/made_up.py": MADE_UP, "tests/other.py": OTHER,
                                      "tests/integration/daemon.py": daemon})
    assert unresolved == []
    assert set(tools) == {"alpha", "beta", "gamma", "gamma.sh", "delta", "epsilon", "zeta",
                          "eta", "theta"}
    assert tools["epsilon"] == ["tests/made_up.py:27"]


def test_scanner_reports_a_lookup_it_cannot_resolve():
    source = ("import shutil, os\nshutil.which(os.environ['TOOL'])\n"
              "def test_fixture(tool):\n    shutil.which(tool)\n")
    assert find_lookups({"x.py": source})[1] == [
        "x.py:2: shutil.which(os.environ['TOOL'])", "x.py:4: shutil.which(tool)"]


def test_checker_fails_when_ci_run_lacks_the_package():
    ci = CI_RUN.read_text()
    apt = apt_packages(ci) - {"logrotate"}   # .ci/run as it was
    found = problems({"logrotate": ["tests/integration/test_ops_systemd.py:75"]}, apt, set())
    assert found == ["logrotate (tests/integration/test_ops_systemd.py:75): package "
                     "logrotate is not in .ci/run's APT_PACKAGES"]
    assert problems({"frobnicate": ["t.py:1"]}, apt, set())[0].startswith(
        "frobnicate (t.py:1): no package known")
    assert problems({"getmail": ["t.py:1"]}, apt, set()) == [
        "getmail (t.py:1): .ci/run does not pip-install getmail6"]
    assert problems({"script": ["t.py:1"], "samba-tool": ["t.py:2"]}, apt, set()) == []


def test_apt_packages_parses_the_array():
    text = 'X=1\nAPT_PACKAGES=(\n  curl openssl  # tls\n  mutt\n)\nOTHER=(a b)\n'
    assert apt_packages(text) == {"curl", "openssl", "mutt"}


# -- the table against Debian's own package database -----------------------------------


def _owner_candidates(path):
    real = os.path.realpath(path)
    out = [path, real]
    for p in (path, real):
        for a, b in (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/")):
            if p.startswith(a):
                out.append(b + p[len(a):])
            elif p.startswith(b):
                out.append(a + p[len(b):])
    return list(dict.fromkeys(out))


def _owners(paths):
    """{path: package} for the paths dpkg knows (one dpkg call for all)."""
    result = subprocess.run(["dpkg", "-S", *paths], capture_output=True, text=True)
    owners = {}
    for line in result.stdout.splitlines():
        package, _, path = line.partition(": ")
        if path and "," not in package and not package.startswith("diversion"):
            owners[path.strip()] = package.split(":")[0].strip()
    return owners


def _query(package, field):
    result = subprocess.run(["dpkg-query", "-W", "-f", "${" + field + "}", package],
                            capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


def table_problems(table):
    """
    Check C{table} ({tool: package}) against dpkg: each installed tool must
    belong to its package, or to one that package depends on.

    @return: C{(problems, number of tools checked)}.
    """
    found = {}
    for tool, package in sorted(table.items()):
        path = shutil.which(tool) or next(
            (p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}") if os.path.exists(p)), None)
        if path is not None:   # not installed here: the CI machine checks it
            found[tool] = _owner_candidates(path)
    owners = _owners([c for candidates in found.values() for c in candidates])
    checked, wrong = 0, []
    for tool, candidates in found.items():
        package = table[tool]
        owner = next((owners[c] for c in candidates if c in owners), None)
        if owner is None:
            continue   # not from a package (e.g. a local build)
        depends = re.findall(r"(?:^|[,|]\s*)([a-z0-9][a-z0-9+.-]*)",
                             _query(package, "Depends"))
        if owner != package and owner not in depends:
            wrong.append(f"{tool}: {candidates[0]} is in {owner}, not {package}")
        if package in ESSENTIAL and _query(package, "Essential") != "yes":
            wrong.append(f"{package} is not Essential")
        checked += 1
    return wrong, checked


needs_dpkg = pytest.mark.skipif(shutil.which("dpkg") is None, reason="not a Debian machine")


@needs_dpkg
def test_tool_packages_table_matches_dpkg():
    wrong, checked = table_problems(TOOL_PACKAGES)
    assert not wrong, "\n".join(wrong)
    if os.environ.get("CI") == "true":
        assert checked >= len(TOOL_PACKAGES) - 2, "most tools should be installed in CI"


@needs_dpkg
def test_table_check_reports_a_wrong_package():
    assert table_problems({"dpkg": "dpkg"}) == ([], 1)
    wrong, _ = table_problems({"dpkg": "coreutils"})
    assert wrong == [f"dpkg: {shutil.which('dpkg')} is in dpkg, not coreutils"]
