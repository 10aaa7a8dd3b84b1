"""`python -m fitact_pipeline.report experiment=<name>`: figures and tables of one MLflow experiment."""
from .build import main

if __name__ == "__main__":
    main()
