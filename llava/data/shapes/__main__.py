"""`python -m llava.data.shapes`: the data-set writer's command line (flags in `generate.parse_args`)."""

from llava.data.shapes.generate import main

if __name__ == "__main__":
    main()
