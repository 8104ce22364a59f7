"""
Tests for codexgw, mirroring the package module by module.

Run them with C{make test}: it starts the backing services (see L{tests.harness}) and runs trial.
"""
