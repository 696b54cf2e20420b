"""A deterministic local corpus made from Python standard-library docstrings (no download).

"short": sentences of 5-30 words. "passages": runs of consecutive docstring sentences of
100-300 words. The order is fixed: modules in the order of MODULES, members sorted by name.
The texts depend only on the Python version (docstrings change between releases).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import warnings
from collections.abc import Iterator

MODULES = (
    "builtins", "math", "cmath", "time", "sys", "os.path", "email", "email.utils", "email.parser",
    "asyncio.events", "asyncio.streams", "asyncio.tasks", "asyncio.base_events", "collections.abc",
    "concurrent.futures.process", "concurrent.futures.thread", "multiprocessing.pool",
    "multiprocessing.managers", "multiprocessing.connection", "unittest.mock", "unittest.case",
    "logging.handlers", "logging.config", "importlib.metadata", "importlib.resources", "http.cookiejar",
    "http.cookies", "xml.sax", "xml.dom.pulldom", "tkinter", "idlelib.editor", "lib2to3.pytree",
    "distutils.ccompiler", "turtle", "ctypes", "curses", "zoneinfo", "graphlib", "tomllib",
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "bz2", "calendar", "cmd", "code",
    "codecs", "collections", "colorsys", "concurrent.futures", "configparser", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "doctest",
    "email.message", "enum", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext",
    "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client", "http.server",
    "imaplib", "importlib", "inspect", "io", "ipaddress", "itertools", "json", "linecache",
    "locale", "logging", "lzma", "mailbox", "mimetypes", "multiprocessing", "netrc", "numbers",
    "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pkgutil", "platform", "plistlib",
    "poplib", "pprint", "pydoc", "queue", "quopri", "random", "re", "reprlib", "sched",
    "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket",
    "socketserver", "sqlite3", "ssl", "statistics", "string", "struct", "subprocess",
    "sysconfig", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
    "trace", "traceback", "types", "typing", "unittest", "urllib.parse", "urllib.request",
    "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree",
    "zipfile", "zipimport",
)
SHORT_WORDS = (5, 30)
PASSAGE_WORDS = (100, 300)
_NOT_PROSE = (">>>", "::", " = ", "{", "}", "***", "|", "+-")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _docstrings() -> Iterator[str]:
    """Module, class, function and method docstrings in a fixed order."""
    seen: set[str] = set()
    for name in MODULES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
        for obj in [module, *_members(module)]:
            doc = inspect.getdoc(obj)
            if doc and doc not in seen:
                seen.add(doc)
                yield doc


def _members(container: object, depth: int = 0) -> Iterator[object]:
    for attr in sorted(vars(container)):
        if attr.startswith("_"):
            continue
        obj = vars(container)[attr]
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
            yield obj
            if inspect.isclass(obj) and depth == 0:
                yield from _members(obj, depth + 1)


def _paragraphs() -> Iterator[str]:
    """Docstring paragraphs, then the language reference topics that pydoc ships."""
    from pydoc_data.topics import topics

    for doc in _docstrings():
        yield from doc.split("\n\n")
    for key in sorted(topics):
        yield from topics[key].split("\n\n")


def _sentences() -> Iterator[str]:
    """Prose sentences: code examples, tables, headings and signatures are skipped."""
    follows_colon = False
    for paragraph in _paragraphs():
        text = " ".join(paragraph.split())
        is_code = follows_colon or any(m in paragraph for m in _NOT_PROSE) or not text.endswith(".")
        follows_colon = text.endswith(":")
        if is_code:
            continue
        for sentence in _SENTENCE_END.split(text):
            if len(sentence.split()) >= 3 and sentence[0].isupper():
                yield sentence


def short_texts(n: int) -> list[str]:
    """The first n distinct sentences of 5-30 words."""
    lo, hi = SHORT_WORDS
    out: list[str] = []
    seen: set[str] = set()
    for sentence in _sentences():
        if lo <= len(sentence.split()) <= hi and sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
            if len(out) == n:
                return out
    raise ValueError(f"the standard library has only {len(out)} short sentences, asked for {n}")


def passages(n: int) -> list[str]:
    """n passages: consecutive sentences joined until a target length, cycling 100..300 words."""
    lo, hi = PASSAGE_WORDS
    out: list[str] = []
    current: list[str] = []
    words = 0
    for sentence in _sentences():
        # Targets step through the range so the corpus covers short and long passages alike.
        target = lo + (len(out) * 37) % (hi - lo + 1)
        current.append(sentence)
        words += len(sentence.split())
        if words >= target:
            text = " ".join(" ".join(current).split()[:hi])
            out.append(text)
            current, words = [], 0
            if len(out) == n:
                return out
    raise ValueError(f"the standard library has only {len(out)} passages, asked for {n}")


def load(name: str, n: int) -> list[str]:
    """A corpus by name: "short" or "passages"."""
    if name == "short":
        return short_texts(n)
    if name == "passages":
        return passages(n)
    raise ValueError(f"corpus must be 'short' or 'passages', got {name!r}")


def fingerprint(texts: list[str]) -> str:
    """A short digest that identifies a corpus in results."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
