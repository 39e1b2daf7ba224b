"""``python -m evaluation.corruptions preview --out grid.png [--image path] [--size 224]``."""

from __future__ import annotations

import argparse

from .preview import load_image, preview_grid, sample_photos


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluation.corruptions", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    preview = commands.add_parser("preview", help="write a PNG grid of every corruption at every severity")
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("--image", help="image file (default: scikit-image's astronaut photo)")
    preview.add_argument("--size", type=int, default=224, help="side of the square image in pixels")
    preview.add_argument("--seed", type=int, default=0, help="seed of the random corruptions")
    preview.add_argument(
        "--reference", action="store_true", help="add the imagecorruptions package's output below each row"
    )
    args = parser.parse_args(argv)
    image = load_image(args.image, args.size) if args.image else sample_photos(args.size, ("astronaut",))[0]
    preview_grid(image, seed=args.seed, reference=args.reference).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
