"""Command line: ``tbps gallery audit`` (who searched a store for what, from its audit log). No PyTorch."""

from __future__ import annotations

import json

import click

from tbps_runtime.clikit import TbpsCommand, json_option, user_errors_exit_2
from tbps_runtime.paths import printable


@click.command(cls=TbpsCommand, name="audit", short_help="Who searched what, and which crops, frames and clips.")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--since", metavar="TIME", help="Only requests at or after this time. ISO-8601; no zone means UTC.")
@click.option("--until", metavar="TIME", help="Only requests before this time. ISO-8601; no zone means UTC.")
@json_option("One JSON list on stdout: one object per request (time, time_iso, key_id, client, route, row, "
             "query, filters, request).")
@user_errors_exit_2
def audit_command(directory: str, since: str | None, until: str | None, as_json: bool) -> None:
    """The store's audit log: every search, crop, frame and clip request tbps serve answered from it, with
    its time, key id (a hash of the API key, never the key), client address, query and filters."""
    from tbps_runtime.paths import one_line
    from tbps_runtime.store.audit import read_audit
    from tbps_runtime.store.rows import parse_time

    entries = read_audit(directory, None if since is None else parse_time(since, "--since"),
                         None if until is None else parse_time(until, "--until"))
    if as_json:
        click.echo(json.dumps([entry.to_json() for entry in entries]))
        return
    for entry in entries:
        document = entry.to_json()
        row = "-" if entry.row is None else str(entry.row)
        query = "-" if entry.query is None else json.dumps(entry.query, ensure_ascii=False)
        options = "" if not entry.filters else "  " + json.dumps(entry.filters, sort_keys=True, ensure_ascii=False)
        click.echo(one_line(printable(f"{document['time_iso']}  key {entry.key_id}  {entry.client}  {entry.route}  "
                                      f"row {row}  {query}{options}")))
