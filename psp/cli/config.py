"""``psp config reference`` prints the config reference generated from the schema;
``psp config update-docs [PAGE]`` rewrites it in docs/configuration.md (a test keeps the two equal)."""
from __future__ import annotations

from typing import Optional, Sequence

from psp.cli.common import Parser, report_user_errors
from psp.config import REFERENCE_PAGE, markdown_reference, update_reference


@report_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = Parser(prog="psp config", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("reference", help="print the generated config reference (markdown)")
    update = commands.add_parser("update-docs", help="rewrite the reference in the docs page")
    update.add_argument("page", nargs="?", default=str(REFERENCE_PAGE))
    args = parser.parse_args(argv)
    if args.command == "reference":
        print(markdown_reference())
    else:
        print(f"{args.page}: {'updated' if update_reference(args.page) else 'already up to date'}")
    return 0
