"""
Fakes that ship with the package: stand-ins for external services (such as the model provider) used
only by the tests and by the offline dev stack, never by a production code path.
"""
