"""
codexgw hosts OpenAI Codex agents for many users and workspaces while the commands those agents run
execute on the users' own machines.

The package is flat: shared codecs (L{codexgw.tokens}, L{codexgw.relayframe}, L{codexgw.config}) at
the top, one sub-package per service, and L{codexgw.testing} for the fakes the tests and the dev stack
use.
"""
