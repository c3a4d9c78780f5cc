"""``GET /docs``: the API as a page a person reads, rendered from the OpenAPI document.

The same document as ``/openapi.json`` (so the two never disagree), as plain HTML: no script, no
stylesheet or font from elsewhere, so it works on an isolated government network. Every operation
has an anchor (``#op-<operationId>``) and every schema one too (``#schema-<Name>``).
"""

from __future__ import annotations

from html import escape
from typing import Any

WHO = {
    "tongbanSignature": "a province or partner, signed (§5 headers)",
    "operatorToken": "an operator (bearer token)",
}
STYLE = """
body{font-family:system-ui,"Noto Sans CJK SC","PingFang SC",sans-serif;max-width:60rem;
margin:2rem auto;padding:0 1rem;line-height:1.45;color:#1b1b1b}
code{background:#f3f3f3;padding:0 .2em}table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;vertical-align:top}
section{border-top:1px solid #ddd;margin-top:1.5rem}.method{font-weight:bold}
"""


def render(document: dict[str, Any]) -> str:
    info = document["info"]
    ops = [
        (path, method, op)
        for path, methods in document["paths"].items()
        for method, op in methods.items()
    ]
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(info['title'])} — API</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{escape(info['title'])} <small>{escape(info['version'])}</small></h1>",
        f"<p>{escape(info.get('description', ''))}</p>",
        '<p>The same API as a machine reads it: <a href="/openapi.json">/openapi.json</a>.</p>',
        "<h2>Operations</h2><ul>",
        *(
            f'<li><a href="#op-{escape(op["operationId"])}"><span class="method">'
            f"{method.upper()}</span> <code>{escape(path)}</code></a> — "
            f"{escape(op.get('summary', ''))}</li>"
            for path, method, op in ops
        ),
        "</ul>",
        *(_operation(path, method, op) for path, method, op in ops),
        "<h2>Schemas</h2>",
        *(_schema(name, schema) for name, schema in sorted(schemas.items())),
        "</body></html>",
    ]
    return "\n".join(parts)


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    who = [WHO.get(name, name) for req in op.get("security", []) for name in req] or ["anyone"]
    rows = [
        f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
        f"<td>{_type(p.get('schema', {}))}</td></tr>"
        for p in op.get("parameters", [])
    ]
    body = op.get("requestBody", {}).get("content", {})
    answers = [
        f"<tr><td>{escape(code)}</td><td>{escape(next(iter(r.get('content', {})), ''))}</td>"
        f"<td>{_content_type(r)}</td></tr>"
        for code, r in op.get("responses", {}).items()
    ]
    out = [
        f'<section id="op-{escape(op["operationId"])}">',
        f'<h3><span class="method">{method.upper()}</span> <code>{escape(path)}</code></h3>',
        f"<p>{escape(op.get('summary', ''))}</p>",
        f"<p>Who may call: {escape(' or '.join(who))}.</p>",
    ]
    if rows:
        out.append("<table><tr><th>parameter</th><th>in</th><th>type</th></tr>")
        out += [*rows, "</table>"]
    for media, content in body.items():
        out.append(f"<p>Body ({escape(media)}): {_type(content.get('schema', {}))}</p>")
    out += ["<table><tr><th>status</th><th>media type</th><th>body</th></tr>", *answers]
    out += ["</table>", "</section>"]
    return "\n".join(out)


def _content_type(response: dict[str, Any]) -> str:
    content = response.get("content", {})
    return _type(next(iter(content.values()))["schema"]) if content else "—"


def _schema(name: str, schema: dict[str, Any]) -> str:
    required = set(schema.get("required", []))
    rows = [
        f"<tr><td><code>{escape(field)}</code></td><td>{_type(spec)}</td>"
        f"<td>{'yes' if field in required else ''}</td>"
        f"<td>{escape(spec.get('description', ''))}</td></tr>"
        for field, spec in schema.get("properties", {}).items()
    ]
    out = [f'<section id="schema-{escape(name)}"><h3>{escape(name)}</h3>']
    if schema.get("description"):
        out.append(f"<p>{escape(schema['description'])}</p>")
    if rows:
        out.append("<table><tr><th>field</th><th>type</th><th>required</th><th>meaning</th></tr>")
        out += [*rows, "</table>"]
    out.append("</section>")
    return "\n".join(out)


def _type(spec: dict[str, Any]) -> str:
    """A JSON schema's type as a short phrase, linking referenced schemas."""
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'
    if "anyOf" in spec:
        return " or ".join(_type(s) for s in spec["anyOf"])
    if "enum" in spec:
        return "one of " + ", ".join(f"<code>{escape(str(v))}</code>" for v in spec["enum"])
    if "const" in spec:
        return f"<code>{escape(str(spec['const']))}</code>"
    kind = spec.get("type", "any")
    if kind == "array":
        return "list of " + _type(spec.get("items", {}))
    return escape(str(kind))
