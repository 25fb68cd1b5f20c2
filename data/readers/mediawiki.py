"""MediaWiki XML dumps (``.xml``, or compressed as the package's ``open_binary`` reads: ``.xml.bz2``, ``.xml.xz``,
``.xml.gz``, ``.xml.zst``): one record per article, wikitext stripped, read as a stream (each page is let go
once read, so memory does not grow with the dump).

Markup is stripped with mwparserfromhell (templates, references, tables, files and categories go;
link text stays). Redirects and pages outside the article namespace are not text to train on: each
becomes an empty record rejected at ``read`` with its reason, so the report still counts every page.
A dump cut off mid-page, as a truncated download is, ends with one ``truncated_dump`` reject instead
of an error (a compressed file cut off: ``truncated_compressed_file``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mwparserfromhell

from indictune.data.readers import Source, make_record, open_binary, reader

# Tags whose content is not prose: references, galleries, maths, code, timelines.
_DROP_TAGS = {
    "ref",
    "gallery",
    "math",
    "syntaxhighlight",
    "source",
    "timeline",
    "score",
    "chem",
    "hiero",
    "imagemap",
    "templatedata",
    "templatestyles",
    "mapframe",
    "graph",
}
# "[[File:..]]", "[[चित्र:..]]", "[[Category:..]]", "[[वर्ग:..]]": links into namespaces that are not text.
_NAMESPACED_LINK = re.compile(r"^\s*[^:\]|]+:")
_BLANK_RUN = re.compile(r"\n\s*\n\s*\n+")
# What malformed wikitext leaves behind (unclosed templates and links, stray HTML tags): the parser keeps it as text.
_LEFTOVER_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_LEFTOVER_MARKUP = re.compile(r"\[\[|\]\]|\{\{|\}\}|\{\||\|\}|</?[A-Za-z][^<>\n]{0,300}>")


def strip_wikitext(wikitext: str) -> str:
    code = mwparserfromhell.parse(wikitext)
    for tag in code.filter_tags(recursive=False):
        if str(tag.tag).strip().lower() in _DROP_TAGS or str(tag.tag).strip().lower() == "table":
            _remove(code, tag)
    for link in code.filter_wikilinks(recursive=False):
        if _NAMESPACED_LINK.match(str(link.title)):
            _remove(code, link)
    lines = []
    for line in code.strip_code(normalize=True, collapse=True).split("\n"):
        line = line.strip()
        if line.startswith(("{|", "|", "!")):  # table rows the parser left as text
            continue
        lines.append(line.strip("=").strip() if line.startswith("=") else line)
    text = "\n".join(lines)
    while True:  # innermost first: {{a|{{b}}}}
        text, n = _LEFTOVER_TEMPLATE.subn("", text)
        if not n:
            break
    return _BLANK_RUN.sub("\n\n", _LEFTOVER_MARKUP.sub("", text)).strip()


def _remove(code, node) -> None:
    try:
        code.remove(node)
    except ValueError:  # already gone with a parent
        pass


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


@reader("mediawiki")
def read_mediawiki(source: Source, path: Path) -> Iterator[dict[str, Any]]:
    position = 0
    root = None
    with open_binary(path) as stream:
        pages = ElementTree.iterparse(stream, events=("start", "end"))
        try:
            for event, element in pages:
                if root is None:
                    root = element
                if event != "end" or _local(element.tag) != "page":
                    continue
                fields = {_local(child.tag): child for child in element}
                title = (fields["title"].text or "") if "title" in fields else ""
                namespace = (fields["ns"].text or "0") if "ns" in fields else "0"
                page_id = fields["id"].text if "id" in fields else None
                wikitext = next((c.text or "" for c in element.iter() if _local(c.tag) == "text"), "")
                meta = {"title": title, "page_id": page_id}
                if namespace != "0":
                    record = make_record(source, path, position, "", read_error=f"namespace:{namespace}", **meta)
                elif "redirect" in fields:
                    record = make_record(source, path, position, "", read_error="redirect", **meta)
                else:
                    record = make_record(source, path, position, strip_wikitext(wikitext), **meta)
                root.clear()  # the page and its cleared predecessors: the root would keep them all
                yield record
                position += 1
        except ElementTree.ParseError as err:
            yield make_record(source, path, position, "", read_error="truncated_dump", where=str(err)[:200])
