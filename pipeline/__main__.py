"""`python -m pipeline ...` and the `dynamicvis-embed` console script."""
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> None:
    from pipeline.run import launch

    sys.exit(launch(sys.argv[1:] if argv is None else list(argv)))


if __name__ == "__main__":
    main()
