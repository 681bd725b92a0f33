"""docs/ stays true to the code: case ids, the tests listed for them, links and sections."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RELIABILITY = DOCS / "reliability.md"
# A case id (W04, a10, "A04-A10"): W webhook, A agent, S fetch, F files, L logs,
# R reliability, I injection, H load, T Talk, U upgrades, P replicas on PostgreSQL,
# N Nextcloud identity (groups, language, usage), M tools from MCP servers.
CASE_ID = re.compile(
    r"(?<![A-Za-z0-9])([WASFLRIHTUPNM])([0-9]{2})(?:\s*[-–]\s*([WASFLRIHTUPNM]?)([0-9]{2}))?(?![0-9])"
)
ROW = re.compile(r"^\| ([A-Z][0-9]{2}) \| .+ \| (.+) \|$", re.MULTILINE)
TICKED = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
PROTOCOL_SECTION = re.compile(r"protocol §([0-9]+)")
DESIGN_SECTION = re.compile(r"DESIGN\.md §([0-9]+)")


def ids_in(text: str, *, ignore_case: bool = False) -> set[str]:
    """Every case id a text names, ranges ("A04-A10") expanded."""
    pattern = re.compile(CASE_ID.pattern, re.IGNORECASE) if ignore_case else CASE_ID
    found = set()
    for match in pattern.finditer(text):
        letter, first = match[1].upper(), int(match[2])
        last = int(match[4]) if match[4] and (match[3] or letter).upper() == letter else first
        found |= {f"{letter}{n:02d}" for n in range(max(first, 1), max(first, last) + 1)}
    return found


def source_files() -> Iterator[Path]:
    for folder in ("bot", "tests"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def functions_of(path: Path) -> dict[str, str]:
    """Each test function of a module: its text, decorators included (parametrize ids)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    functions = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            functions[node.name] = "\n".join(lines[start - 1 : node.end_lineno])
    return functions


def documented_rows() -> dict[str, str]:
    """Case id -> its tests cell in docs/reliability.md."""
    return dict(ROW.findall(RELIABILITY.read_text(encoding="utf-8")))


def listed_tests(cell: str) -> list[tuple[str, str]]:
    """(file under tests/, test name) pairs of a tests cell: `file.py` `test_a` `test_b`; …"""
    pairs, current = [], ""
    for token in TICKED.findall(cell):
        if token.endswith(".py"):
            current = token
        elif token.startswith("test"):
            pairs.append((current, token))
    return pairs


def cited_ids() -> dict[str, set[str]]:
    """Case id -> the files that name it: upper case anywhere, lower case in test names."""
    cited: dict[str, set[str]] = {}
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        names = " ".join(re.findall(r"def (test_\w+)", text)).replace("_", " ")
        for case in ids_in(text) | ids_in(names, ignore_case=True):
            cited.setdefault(case, set()).add(str(path.relative_to(ROOT)))
    return cited


def test_every_case_id_named_in_code_or_tests_has_a_row() -> None:
    rows = documented_rows()
    missing = {case: sorted(files) for case, files in cited_ids().items() if case not in rows}
    assert not missing, f"add these ids to docs/reliability.md: {missing}"


def test_every_listed_test_exists_and_names_its_id() -> None:
    problems = []
    for case, cell in documented_rows().items():
        if cell.startswith("**NOT COVERED**"):
            continue
        pairs = listed_tests(cell)
        if not pairs:
            problems.append(f"{case}: lists no test and is not marked NOT COVERED")
        for file, name in pairs:
            path = ROOT / "tests" / file
            text = functions_of(path).get(name) if path.is_file() else None
            if text is None:
                problems.append(f"{case}: tests/{file}::{name} does not exist")
            elif case not in ids_in(text, ignore_case=True):
                problems.append(f"{case}: tests/{file}::{name} does not name {case}")
    assert not problems, "docs/reliability.md is out of date:\n" + "\n".join(problems)


def test_an_id_marked_not_covered_is_named_by_no_test() -> None:
    rows = documented_rows()
    uncovered = {case for case, cell in rows.items() if cell.startswith("**NOT COVERED**")}
    covering = [
        f"{case}: {path.relative_to(ROOT)}::{name}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for name, text in functions_of(path).items()
        for case in sorted(ids_in(text, ignore_case=True) & uncovered)
    ]
    assert not covering, "list these tests in docs/reliability.md:\n" + "\n".join(covering)


def test_relative_links_in_docs_lead_to_files() -> None:
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            path = target.split("#", 1)[0]
            if path and "://" not in path and not (page.parent / path).exists():
                broken.append(f"{page.name}: {target}")
    assert not broken, f"broken links: {broken}"


def test_cited_sections_exist_in_docs() -> None:
    """A "protocol §N" cited in code or tests is a section of docs/talk-protocol.md, and
    each "DESIGN.md §N" is mapped to its place in docs/ by docs/README.md."""
    protocol = (DOCS / "talk-protocol.md").read_text(encoding="utf-8")
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    missing = []
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT)
        missing += [
            f"{where}: protocol §{number}"
            for number in PROTOCOL_SECTION.findall(text)
            if not re.search(rf"^## {number}\. ", protocol, re.MULTILINE)
        ]
        missing += [
            f"{where}: DESIGN.md §{number}"
            for number in DESIGN_SECTION.findall(text)
            if f"DESIGN.md §{number}" not in index
        ]
    assert not missing, f"cited sections not found in docs/: {missing}"
