"""Shared by every test folder: ``tests/`` goes on ``sys.path`` (pytest puts a root conftest's folder there), so
unit and integration test modules alike import the contract suites of ``tests/contracts`` (each written once and
run on every implementation) as ``contracts.<name>``."""
