"""
Tests of the production packaging: C{docker-compose.yml}, the C{Dockerfile} and C{.dockerignore}
(C{delivery.md} §1, §4).

Docker is not needed: the compose file is validated offline against the compose-spec JSON schema that
C{check-jsonschema} ships (in process, and once through its command line), and its environment is
checked against the programs' own configuration tables (L{codexgw.configdoc.variables_read}) and run
through their real C{load_config}, after a compose-style substitution of test values. The Dockerfile
and C{.dockerignore} are read as text.

Decisions:
 - A service's program is the first word of its C{command} (C{codexgw-exec}, C{codexgw-app},
   C{codexgw-executor}), as the image's entrypoint is C{twist}. Services of other images (PostgreSQL,
   the S3 server and its bucket one-shot) must set no C{CXG_*} variable.
 - Secret-bearing values (names containing C{SECRET}, C{PASSWORD}, C{TOKEN}, C{ACCESS_KEY} or
   C{API_KEY}) must be nothing but one substitution of a variable, required (C{:?}) or empty by
   default (C{:-}), so no secret can be committed in the file.
 - The substitution here implements what the file uses: C{${VAR}}, C{${VAR:-default}},
   C{${VAR:?message}} and C{$$}.
 - The C{.dockerignore} matcher implements Docker's rules as far as the file needs them: patterns in
   order, the last match wins, C{!} re-includes, a pattern matching a parent directory matches what is
   inside it, C{**/} matches any depth.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import jsonschema
from ruamel.yaml import YAML
from twisted.trial.unittest import SynchronousTestCase

from codexgw import configdoc
from codexgw.appgw import config as appgw_config
from codexgw.execgw import config as execgw_config
from codexgw.executor import config as executor_config
from tests.support import REPO_ROOT

COMPOSE: Final = REPO_ROOT / "docker-compose.yml"
DOCKERFILE: Final = REPO_ROOT / "Dockerfile"
DOCKERIGNORE: Final = REPO_ROOT / ".dockerignore"
MAKEFILE: Final = REPO_ROOT / "Makefile"

#: The services that run a codexgw program, by program.
PROGRAM_SERVICES: Final = {
    "codexgw-exec": "codexgw-exec",
    "codexgw-app": "codexgw-app",
    "codexgw-executor": "executor",
}

_SUBSTITUTION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}")
_SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|API_KEY")
_SECRET_VALUE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::\?[^}]+|:-)\}")


def load_compose() -> dict[str, Any]:
    """
    The compose file as plain data (YAML merge keys resolved; a duplicate key is an error).
    """
    with COMPOSE.open(encoding="utf-8") as f:
        document = YAML(typ="safe", pure=True).load(f)
    assert isinstance(document, dict)
    return document


def compose_schema() -> dict[str, Any]:
    """
    The compose-spec JSON schema vendored by C{check-jsonschema}.
    """
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(resource.joinpath("compose-spec.json").read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


def schema_errors(document: Mapping[str, Any]) -> list[str]:
    """
    Every violation of the compose-spec schema by C{document}, as C{path: message}.
    """
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        "/".join(str(part) for part in error.absolute_path) + ": " + error.message
        for error in validator.iter_errors(document)
    ]


def substitute(value: str, variables: Mapping[str, str]) -> str:
    """
    Compose's interpolation of C{value} with C{variables} (the ones the file uses; see the module
    docstring).

    @raise KeyError: for a required (C{:?}) variable that is unset or empty.
    """

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        found = variables.get(name, "")
        if operator == ":?" and not found:
            raise KeyError(f"{name}: {argument}")
        if operator == ":-" and not found:
            return str(argument)
        return found

    return _SUBSTITUTION.sub(one, value)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """
    A service's C{environment} mapping as written (the file uses the mapping form only).
    """
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment must be a mapping"
    return {str(k): str(v) for k, v in env.items()}


def program(service: Mapping[str, Any]) -> str | None:
    """
    The codexgw program a service runs, or C{None} for a service of another image.
    """
    command = service.get("command")
    if isinstance(command, list) and command and str(command[0]).startswith("codexgw-"):
        return str(command[0])
    return None


#: Values substituted for the compose file's variables, as an operator's C{.env} would give them.
DOTENV: Final = {
    "POSTGRES_PASSWORD": "pg-password-for-tests",
    "S3_ACCESS_KEY_ID": "codexgw-access",
    "S3_SECRET_ACCESS_KEY": "codexgw-secret-access-key",
    "CXG_CAPTOKEN_HMAC_SECRET": "c" * 64,
    "CXG_INTERNAL_SHARED_SECRET": "i" * 64,
    "CXG_AGENTSERVER_INTERNAL_SECRET": "a" * 64,
    "CXG_INBOUND_HMAC_SECRET": "h" * 64,
    "CXG_MODEL_PROVIDER_BASE_URL": "https://llm.example.com/v1",
    "CXG_EXECUTOR_ID": "exe_test",
    "CXG_EXECUTOR_TOKEN": "registration-token",
}


class ComposeSchemaTests(SynchronousTestCase):
    """
    C{docker-compose.yml} is a valid compose file by the compose-spec schema.
    """

    def test_validates(self) -> None:
        """
        The file has no schema violation.
        """
        self.assertEqual(schema_errors(load_compose()), [])

    def test_validatorRejectsMistakes(self) -> None:
        """
        The validator is not vacuous: a misspelt service key and a healthcheck of the wrong type are
        both reported.
        """
        document = copy.deepcopy(load_compose())
        document["services"]["postgres"]["imagee"] = "postgres:15"
        document["services"]["codexgw-app"]["healthcheck"]["test"] = 7
        errors = schema_errors(document)
        self.assertTrue(any(e.startswith("services/postgres") for e in errors), errors)
        self.assertTrue(
            any(e.startswith("services/codexgw-app/healthcheck/test") for e in errors), errors
        )

    def test_checkJsonschemaCommand(self) -> None:
        """
        C{check-jsonschema --builtin-schema vendor.compose-spec} (offline: the schema ships with it)
        accepts the file.
        """
        command = Path(sys.executable).parent / "check-jsonschema"
        done = subprocess.run(
            [command, "--builtin-schema", "vendor.compose-spec", COMPOSE],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ),
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)


class ComposeEnvironmentTests(SynchronousTestCase):
    """
    Each codexgw service gets exactly the configuration its program reads, and it passes that
    program's validation.
    """

    def setUp(self) -> None:
        """
        Load the file once per test.
        """
        self.compose = load_compose()
        self.services: dict[str, dict[str, Any]] = self.compose["services"]

    def test_servicesRunPrograms(self) -> None:
        """
        Each codexgw program has its service, built from the repository's Dockerfile into one image.
        """
        images = set()
        for name, service_name in PROGRAM_SERVICES.items():
            service = self.services[service_name]
            self.assertEqual(program(service), name)
            self.assertEqual(service["build"]["context"], ".")
            self.assertEqual(service["build"]["dockerfile"], "Dockerfile")
            images.add(service["image"])
        self.assertEqual(len(images), 1)

    def test_everyVariableIsRead(self) -> None:
        """
        Every C{CXG_*} variable set on a service is one its program reads; services of other images
        set none.
        """
        for name, service in self.services.items():
            variables = {v for v in environment(service) if v.startswith("CXG_")}
            runs = program(service)
            if runs is None:
                self.assertEqual(variables, set(), name)
            else:
                self.assertEqual(variables - configdoc.variables_read(runs), set(), name)

    def test_requiredVariablesSet(self) -> None:
        """
        Every variable a program requires is set on its service.
        """
        for table in configdoc.program_tables():
            required = {name for name, _default, is_required, _d in table.rows if is_required}
            required.update(r.variable for r in table.executor_rows if r.required and r.variable)
            env = environment(self.services[PROGRAM_SERVICES[table.program]])
            self.assertEqual(required - set(env), set(), table.program)

    def test_secretsAreSubstituted(self) -> None:
        """
        No secret is written in the file: each secret-bearing value is one substitution, and the
        database URL takes its password from one.
        """
        for name, service in self.services.items():
            for variable, value in environment(service).items():
                if _SECRET_NAME.search(variable):
                    self.assertIsNotNone(_SECRET_VALUE.fullmatch(value), f"{name}: {variable}={value}")
        url = environment(self.services["codexgw-exec"])["CXG_DATABASE_URL"]
        self.assertIn(":${POSTGRES_PASSWORD:?", url)

    def test_sharedSecretsAgree(self) -> None:
        """
        The app gateway takes the exec gateway's secrets from the same variables.
        """
        exec_env = environment(self.services["codexgw-exec"])
        app_env = environment(self.services["codexgw-app"])
        self.assertEqual(
            app_env["CXG_EXEC_GATEWAY_INTERNAL_SECRET"], exec_env["CXG_INTERNAL_SHARED_SECRET"]
        )
        for variable in (
            "CXG_CAPTOKEN_HMAC_SECRET",
            "CXG_AGENTSERVER_INTERNAL_SECRET",
            "CXG_INBOUND_HMAC_SECRET",
        ):
            self.assertEqual(app_env[variable], exec_env[variable], variable)

    def test_addressesAgree(self) -> None:
        """
        The URLs point at the services, on the ports they listen on and publish, and the bucket the
        app gateway uses is the one the one-shot creates.
        """
        exec_env = environment(self.services["codexgw-exec"])
        port = exec_env["CXG_PORT"]
        self.assertIn(f"{port}:{port}", self.services["codexgw-exec"]["ports"])
        app_env = environment(self.services["codexgw-app"])
        self.assertEqual(app_env["CXG_EXEC_GATEWAY_URL"], f"ws://codexgw-exec:{port}")
        self.assertEqual(app_env["CXG_EXEC_GATEWAY_INTERNAL_URL"], f"http://codexgw-exec:{port}")
        executor_env = environment(self.services["executor"])
        self.assertEqual(executor_env["CXG_EXECUTOR_GATEWAY"], f"http://codexgw-exec:{port}")
        app_port = app_env["CXG_LISTEN_ADDR"].rsplit(":", 1)[1]
        self.assertIn(f"{app_port}:{app_port}", self.services["codexgw-app"]["ports"])
        self.assertTrue(app_env["CXG_S3_ENDPOINT"].startswith("http://s3:"))
        init = " ".join(self.services["s3-init"]["entrypoint"])
        self.assertIn(f"mb --ignore-existing s3/{app_env['CXG_S3_BUCKET']}", init)
        self.assertIn(
            app_env["CXG_TMP_ROOT"], {v.split(":")[1] for v in self.services["codexgw-app"]["volumes"]}
        )

    def test_execGatewayConfigurationLoads(self) -> None:
        """
        With an operator's C{.env}, the exec gateway's environment passes its own validation: a
        PostgreSQL store with the password from the substitution, the SDK surface on HMAC tokens and
        the byte relay on.
        """
        env = {k: substitute(v, DOTENV) for k, v in environment(self.services["codexgw-exec"]).items()}
        config = execgw_config.load_config(env)
        self.assertEqual(config.database.engine, "postgres")
        self.assertIn(DOTENV["POSTGRES_PASSWORD"], config.database_url)
        self.assertEqual(config.sdk_mode, "hmac")
        self.assertTrue(config.relay_enabled)
        self.assertIsNone(config.public_ws_base_url)

    def test_appGatewayConfigurationLoads(self) -> None:
        """
        With an operator's C{.env}, the app gateway's environment passes its own validation, with S3
        as the object store and HMAC inbound tokens.
        """
        env = {k: substitute(v, DOTENV) for k, v in environment(self.services["codexgw-app"]).items()}
        bin_dir = Path(self.mktemp())
        bin_dir.mkdir()
        codex = bin_dir / "codex"
        codex.write_text("#!/bin/sh\n")
        codex.chmod(0o755)
        config = appgw_config.load_config({**env, "PATH": str(bin_dir)})
        self.assertTrue(config.store.uses_s3)
        self.assertTrue(config.store.s3_path_style)
        self.assertEqual(config.store.tmp_root, "/var/lib/codexgw/homes")
        self.assertEqual(config.auth_mode, "hmac")
        self.assertEqual(config.listen_addr.endpoint, "tcp:8086")

    def test_executorConfigurationLoads(self) -> None:
        """
        With the id and token of the one-time registration in C{.env}, the executor's environment
        passes its own validation (its state dir moved to a temporary directory: loading creates it).
        """
        env = {k: substitute(v, DOTENV) for k, v in environment(self.services["executor"]).items()}
        bin_dir = Path(self.mktemp()).absolute()
        bin_dir.mkdir()
        codex = bin_dir / "codex"
        codex.write_text("#!/bin/sh\n")
        codex.chmod(0o755)
        state = bin_dir.parent / "state"
        env.update(PATH=str(bin_dir), CXG_EXECUTOR_STATE_DIR=str(state))
        config = executor_config.load_config({}, env)
        self.assertEqual(config.gateway, "http://codexgw-exec:6060")
        self.assertEqual(config.executor_id, DOTENV["CXG_EXECUTOR_ID"])
        self.assertEqual(config.token, DOTENV["CXG_EXECUTOR_TOKEN"])
        self.assertEqual(config.codex_bin, str(codex))

    def test_missingSecretStopsCompose(self) -> None:
        """
        A required secret missing from C{.env} makes the substitution fail (compose refuses to start)
        rather than start a service with an empty secret.
        """
        env = environment(self.services["codexgw-exec"])
        partial = {k: v for k, v in DOTENV.items() if k != "CXG_INTERNAL_SHARED_SECRET"}
        with self.assertRaises(KeyError):
            substitute(env["CXG_INTERNAL_SHARED_SECRET"], partial)

    def test_executorWaitsForRegistration(self) -> None:
        """
        The executor is in the C{executor} profile and its id and token default to empty, so the rest
        of the stack starts before the one-time registration.
        """
        executor = self.services["executor"]
        self.assertEqual(executor["profiles"], ["executor"])
        env = environment(executor)
        for variable in ("CXG_EXECUTOR_ID", "CXG_EXECUTOR_TOKEN"):
            self.assertEqual(env[variable], "${" + variable + ":-}")
        for name, service in self.services.items():
            if name != "executor":
                self.assertNotIn("profiles", service, name)

    def test_dependencies(self) -> None:
        """
        Each service starts once what it needs is healthy (or, for the bucket, created).
        """
        expected = {
            "s3-init": {"s3": "service_healthy"},
            "codexgw-exec": {"postgres": "service_healthy"},
            "codexgw-app": {
                "codexgw-exec": "service_healthy",
                "s3-init": "service_completed_successfully",
            },
            "executor": {"codexgw-exec": "service_healthy"},
        }
        for name, needs in expected.items():
            depends = self.services[name]["depends_on"]
            self.assertEqual({k: v["condition"] for k, v in depends.items()}, needs, name)

    def test_healthchecks(self) -> None:
        """
        Every long-running service that listens has a healthcheck; the gateways' ask their own
        C{/readyz}.
        """
        for name in ("postgres", "s3", "codexgw-exec", "codexgw-app"):
            test = self.services[name]["healthcheck"]["test"]
            self.assertEqual(test[0], "CMD", name)
        exec_port = environment(self.services["codexgw-exec"])["CXG_PORT"]
        self.assertIn(
            f"http://127.0.0.1:{exec_port}/readyz", self.services["codexgw-exec"]["healthcheck"]["test"]
        )
        app_port = environment(self.services["codexgw-app"])["CXG_LISTEN_ADDR"].rsplit(":", 1)[1]
        self.assertIn(
            f"http://127.0.0.1:{app_port}/readyz", self.services["codexgw-app"]["healthcheck"]["test"]
        )

    def test_gracefulStop(self) -> None:
        """
        The gateways get more than their 30 s shutdown budget before Docker kills them.
        """
        for name in ("codexgw-exec", "codexgw-app"):
            grace = self.services[name]["stop_grace_period"]
            self.assertGreater(int(grace.removesuffix("s")), 30, name)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """
    The Dockerfile's instructions as C{(KEYWORD, arguments)}, continuation lines joined and comments
    dropped.
    """
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


def makefile_codex_version() -> str:
    """
    The codex version C{make install} pins.
    """
    found = re.search(r"^CODEX_VERSION\s*:=\s*(\S+)\s*$", MAKEFILE.read_text(encoding="utf-8"), re.M)
    assert found is not None
    return found.group(1)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            close = pattern.index("]", i + 1)
            out += "[" + pattern[i + 1 : close].replace("\\", "\\\\") + "]"
            i = close + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """
    Whether C{.dockerignore}'s C{patterns} keep C{path} (relative, C{/}-separated) out of the build
    context (see the module docstring for the rules implemented).
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negated = raw.startswith("!")
        regex = _glob_regex(raw.removeprefix("!").rstrip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


class DockerfileTests(SynchronousTestCase):
    """
    The image: pinned codex, pinned Python dependencies, twist as entry point, a non-root user.
    """

    def setUp(self) -> None:
        """
        Parse the Dockerfile once per test.
        """
        self.instructions = dockerfile_instructions()

    def arguments(self, keyword: str) -> list[str]:
        """
        The arguments of every C{keyword} instruction, in order.
        """
        return [arguments for k, arguments in self.instructions if k == keyword]

    def test_base(self) -> None:
        """
        Every stage starts from Python 3.11 on Debian bookworm.
        """
        bases = [arguments.split()[0] for arguments in self.arguments("FROM")]
        self.assertEqual(set(bases), {"python:3.11-slim-bookworm"})

    def test_pinnedCodex(self) -> None:
        """
        The image installs C{@openai/codex} at the version C{make install} pins (0.169.0), with node
        and npm from Debian, and refuses to build unless the native binary reports that version.
        """
        version = makefile_codex_version()
        self.assertEqual(version, "0.169.0")
        runs = self.arguments("RUN")
        self.assertTrue(any("apt-get install" in r and " nodejs npm " in r for r in runs))
        self.assertTrue(
            any("npm install" in r and f"@openai/codex@{version}" in r.split() for r in runs)
        )
        self.assertTrue(any(f"codexgw.codexbin --check /opt/codex {version}" in r for r in runs))

    def test_pinnedPackages(self) -> None:
        """
        The package is installed with the exact pins of C{constraints.txt}, and the flat plugin module
        lands in Twisted's plugin package (a regular install leaves it out).
        """
        runs = self.arguments("RUN")
        install = [r for r in runs if "pip install" in r]
        self.assertEqual(len(install), 1)
        self.assertIn("-c /tmp/src/constraints.txt", install[0])
        self.assertIn("cp /tmp/src/twisted/plugins/codexgw_plugins.py", install[0])
        self.assertIn("twist --help | grep -q codexgw-executor", install[0])

    def test_nonRootTwist(self) -> None:
        """
        The image runs C{twist} as a non-root user.
        """
        user = self.arguments("USER")[-1]
        self.assertNotIn(user.split(":")[0], ("root", "0"))
        self.assertEqual(json.loads(self.arguments("ENTRYPOINT")[-1]), ["twist"])

    def test_buildContext(self) -> None:
        """
        C{.dockerignore} lets in every file the Dockerfile copies from the context and keeps out
        secrets and local state.
        """
        patterns = [
            line.strip()
            for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        sources = []
        for arguments in self.arguments("COPY"):
            if arguments.startswith("--from="):
                continue
            sources += arguments.split()[:-1]
        self.assertIn("codexgw", sources)
        for source in sources:
            self.assertFalse(dockerignored(source, patterns), source)
        self.assertFalse(dockerignored("codexgw/execgw/store/sql/postgres/001_executors.sql", patterns))
        for kept_out in (
            ".env",
            ".venv/bin/python",
            ".tools/codex/node_modules",
            "var/dev-secrets.json",
            ".git/config",
            "tests/test_packaging.py",
            "codexgw/__pycache__/cli.cpython-311.pyc",
        ):
            self.assertTrue(dockerignored(kept_out, patterns), kept_out)
