# The two commands of the README, and a few for developers.
.PHONY: demo test lint unit integration bootstrap down schemas

bootstrap:
	@scripts/bootstrap.sh

# The main job: start the local stack, generate a world, replay it into Kafka, show what landed.
demo: bootstrap
	.venv/bin/streamrec demo

# The whole test suite (lint, the import contracts of pyproject.toml, unit, integration against a
# real Kafka broker and redis-server that the test session starts on its own ports and stops at the end).
test: bootstrap
	.venv/bin/ruff check .
	.venv/bin/lint-imports
	.venv/bin/python -m pytest -q

unit: bootstrap
	.venv/bin/python -m pytest -q tests/unit

integration: bootstrap
	.venv/bin/python -m pytest -q tests/integration

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/lint-imports

down:
	.venv/bin/streamrec stack down

schemas: bootstrap
	.venv/bin/python -m schemas.json_schema
