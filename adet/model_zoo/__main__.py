"""``python -m adet.model_zoo [--write [PATH]]``: print MODEL_ZOO.md, or write it (default:
MODEL_ZOO.md at the repository root)."""
import argparse
from pathlib import Path

from .markdown import render_markdown

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "MODEL_ZOO.md"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", nargs="?", const=str(DEFAULT_PATH), metavar="PATH",
                        help=f"write the file (default {DEFAULT_PATH}) instead of printing it")
    args = parser.parse_args(argv)
    text = render_markdown()
    if args.write:
        Path(args.write).write_text(text)
        print(f"wrote {args.write}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
