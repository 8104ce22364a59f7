"""
Tests for L{codexgw.appgw.rpcpolicy}: the approval auto-reply of C{app-gateway.md} §7.3 and the client
policy of §7.4, as pure functions (acceptance items 20–23 at the byte level; the proxy tests check the
same through real websockets).
"""

from __future__ import annotations

import json

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from codexgw.appgw.rpcpolicy import (
    APPROVAL_REPLIES,
    CONFIG_GUARDED_METHODS,
    FORBIDDEN_CONFIG_ROOTS,
    FORWARD,
    HOST_CONFIG_METHODS,
    LOCAL_IO_METHODS,
    ClientVerdict,
    approval_reply,
    error_reply,
    judge_client_message,
)

#: §7.3's table as reply bytes for id 1, written out by hand.
APPROVAL_BYTES = {
    "item/commandExecution/requestApproval": b'{"jsonrpc":"2.0","id":1,"result":{"decision":"accept"}}',
    "item/fileChange/requestApproval": b'{"jsonrpc":"2.0","id":1,"result":{"decision":"accept"}}',
    "item/permissions/requestApproval": b'{"jsonrpc":"2.0","id":1,"result":{"permissions":{}}}',
    "item/tool/requestUserInput": b'{"jsonrpc":"2.0","id":1,"result":{"answers":{}}}',
    "mcpServer/elicitation/request": (
        b'{"jsonrpc":"2.0","id":1,"result":{"action":"accept","content":null,"_meta":null}}'
    ),
    "execCommandApproval": b'{"jsonrpc":"2.0","id":1,"result":{"decision":"approved"}}',
    "applyPatchApproval": b'{"jsonrpc":"2.0","id":1,"result":{"decision":"approved"}}',
}

LOCAL_IO_TEXT = (
    "This RPC is disabled in the cloud deployment because it would access the shared "
    "codex-app-gateway pod, not your local machine. Use the LLM-driven shell / read_file tools "
    "(they route through your registered executor)."
)
HOST_CONFIG_TEXT = (
    "This RPC is disabled in the cloud deployment because it would change the configuration of the "
    "shared codex-app-gateway pod."
)

#: The 14 local-IO methods of §7.4, written out by hand.
THE_14 = (
    "thread/shellCommand", "command/exec", "command/exec/write", "command/exec/terminate",
    "command/exec/resize", "fs/readFile", "fs/writeFile", "fs/createDirectory", "fs/remove", "fs/copy",
    "fs/readDirectory", "fs/getMetadata", "fs/watch", "fs/unwatch",
)  # fmt: skip

#: Methods the TUI needs (§7.4, acceptance items 21, 72).
PASS_THROUGH = (
    "initialize", "initialized", "turn/start", "thread/start", "thread/resume", "thread/list",
    "skills/list", "config/read", "account/read", "model/list", "plugin/installed",
    "thread/loaded/list", "turn/interrupt", "thread/fork",
)  # fmt: skip

BLOCKED = LOCAL_IO_METHODS | HOST_CONFIG_METHODS


def encode(message: object) -> bytes:
    """
    C{message} as compact JSON bytes.
    """
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def request(method: str, request_id: object = 1, params: object = None) -> bytes:
    """
    A JSON-RPC request (a notification when C{request_id} is C{...}).
    """
    message: dict[str, object] = {"jsonrpc": "2.0"}
    if request_id is not ...:
        message["id"] = request_id
    message["method"] = method
    if params is not None:
        message["params"] = params
    return encode(message)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


class ApprovalReplyTests(SynchronousTestCase):
    """
    L{approval_reply} (§7.3, acceptance item 20).
    """

    def test_table(self) -> None:
        """
        Each approval method with id 1 gets exactly the reply bytes of the spec's table.
        """
        self.assertEqual(set(APPROVAL_REPLIES), set(APPROVAL_BYTES))
        for method, expected in APPROVAL_BYTES.items():
            with self.subTest(method=method):
                message = request(method, 1, {"threadId": "t", "itemId": "i"})
                self.assertEqual(approval_reply(message), expected)

    def test_string_id(self) -> None:
        """
        A string id is echoed as a string.
        """
        message = request("execCommandApproval", "abc-1")
        self.assertEqual(
            approval_reply(message), b'{"jsonrpc":"2.0","id":"abc-1","result":{"decision":"approved"}}'
        )

    def test_parsed_message(self) -> None:
        """
        A message the broker has parsed already gives the same bytes.
        """
        for method, expected in APPROVAL_BYTES.items():
            with self.subTest(method=method):
                self.assertEqual(approval_reply({"id": 1, "method": method, "params": {}}), expected)

    def test_notifications_pass(self) -> None:
        """
        The same methods without an id, or with a null id, are not requests.
        """
        for method in APPROVAL_REPLIES:
            with self.subTest(method=method):
                self.assertIsNone(approval_reply(request(method, ...)))
                self.assertIsNone(approval_reply(request(method, None)))
                self.assertIsNone(approval_reply({"method": method, "id": None}))

    def test_other_messages_pass(self) -> None:
        """
        Other methods, responses, malformed JSON, arrays, scalars and non-UTF-8 bytes pass.
        """
        for message in (
            request("item/tool/call", 1),
            request("turn/completed", ...),
            b'{"id":1,"result":{"decision":"accept"}}',
            b'{"id":1,"method":"execCommandApproval"',
            b'[{"id":1,"method":"execCommandApproval"}]',
            b'"execCommandApproval"',
            b'{"id":1,"method":"execCommandApproval","x":"\xff"}',
            b"",
            b'{"id":1,"method":["execCommandApproval"]}',
        ):
            with self.subTest(message=message):
                self.assertIsNone(approval_reply(message))

    def test_escaped_method(self) -> None:
        """
        A method spelled with JSON escapes is still recognised (the fast path must not skip it).
        """
        for raw in (
            b'{"id":7,"method":"item\\/fileChange\\/requestApproval"}',
            b'{"id":7,"method":"execCommand\\u0041pproval"}',
            b'{"id":7,"m\\u0065thod":"applyPatch\\u0041pproval"}',
        ):
            with self.subTest(raw=raw):
                reply = approval_reply(raw)
                self.assertIsNotNone(reply)
                assert reply is not None
                self.assertEqual(json.loads(reply)["id"], 7)

    def test_whitespace_and_bom(self) -> None:
        """
        JSON whitespace and a byte order mark before the object do not hide a request.
        """
        body = request("execCommandApproval", 1)
        self.assertEqual(approval_reply(b" \r\n\t" + body), APPROVAL_BYTES["execCommandApproval"])
        self.assertEqual(approval_reply(b"\xef\xbb\xbf" + body), APPROVAL_BYTES["execCommandApproval"])

    @given(st.integers() | st.text())
    @settings(max_examples=200)
    def test_ids_echoed(self, request_id: int | str) -> None:
        """
        Integer ids (of any size) and string ids come back unchanged: the reply is the table's bytes
        around the id written as compact JSON.
        """
        message = encode({"jsonrpc": "2.0", "id": request_id, "method": "applyPatchApproval"})
        reply = approval_reply(message)
        assert reply is not None
        self.assertEqual(
            json.loads(reply), {"jsonrpc": "2.0", "id": request_id, "result": {"decision": "approved"}}
        )
        if isinstance(request_id, int):
            self.assertEqual(
                reply, b'{"jsonrpc":"2.0","id":%d,"result":{"decision":"approved"}}' % request_id
            )

    @given(st.binary(max_size=64) | json_values.map(encode))
    @settings(max_examples=300)
    def test_never_raises(self, payload: bytes) -> None:
        """
        Any bytes give C{None} or a reply, never an exception.
        """
        reply = approval_reply(payload)
        self.assertTrue(reply is None or reply.startswith(b'{"jsonrpc":"2.0","id":'))


class ClientPolicyTests(SynchronousTestCase):
    """
    L{judge_client_message} (§7.4, acceptance items 21–23).
    """

    def test_the_14(self) -> None:
        """
        The local-IO list has exactly the 14 methods of the spec.
        """
        self.assertEqual(len(THE_14), 14)
        self.assertEqual(LOCAL_IO_METHODS, frozenset(THE_14))

    def test_local_io_reply(self) -> None:
        """
        A local-IO request with an integer id gets the exact -32601 reply.
        """
        verdict = judge_client_message(request("fs/readFile", 5, {"path": "/etc/passwd"}))
        expected = (
            b'{"jsonrpc":"2.0","id":5,"error":{"code":-32601,"message":"'
            + LOCAL_IO_TEXT.encode()
            + b'"}}'
        )
        self.assertEqual(verdict, ClientVerdict("block", "local_io", "fs/readFile", expected))

    def test_local_io_each(self) -> None:
        """
        Each local-IO method with an integer id and with a string id is blocked with the exact reply;
        as a notification it is blocked without one.
        """
        for method in THE_14:
            for request_id in (3, "s-3"):
                with self.subTest(method=method, request_id=request_id):
                    verdict = judge_client_message(request(method, request_id, {}))
                    reply = error_reply(request_id, -32601, LOCAL_IO_TEXT)
                    self.assertEqual(verdict, ClientVerdict("block", "local_io", method, reply))
            with self.subTest(method=method, request_id=None):
                self.assertEqual(
                    judge_client_message(request(method, ...)),
                    ClientVerdict("block", "local_io", method),
                )
                self.assertEqual(
                    judge_client_message(request(method, None)),
                    ClientVerdict("block", "local_io", method),
                )

    def test_string_id_bytes(self) -> None:
        """
        A string id is echoed as a JSON string in the error reply.
        """
        verdict = judge_client_message(request("command/exec", "abc", {"command": ["touch", "/tmp/x"]}))
        assert verdict.reply is not None
        self.assertTrue(verdict.reply.startswith(b'{"jsonrpc":"2.0","id":"abc","error":{"code":-32601,'))

    def test_host_config(self) -> None:
        """
        Host-config methods get the exact -32601 host-config reply.
        """
        self.assertEqual(len(HOST_CONFIG_METHODS), 7)
        for method in HOST_CONFIG_METHODS:
            with self.subTest(method=method):
                verdict = judge_client_message(request(method, 9, {}))
                expected = (
                    b'{"jsonrpc":"2.0","id":9,"error":{"code":-32601,"message":"'
                    + HOST_CONFIG_TEXT.encode()
                    + b'"}}'
                )
                self.assertEqual(verdict, ClientVerdict("block", "host_config", method, expected))

    def test_config_override(self) -> None:
        """
        C{thread/start} with C{params.config = {"mcp_servers.x.command":"sh"}} gets the exact -32602
        reply; C{{"model":"m"}} passes.
        """
        verdict = judge_client_message(
            request("thread/start", 2, {"config": {"mcp_servers.x.command": "sh"}})
        )
        self.assertEqual(
            verdict.reply,
            b'{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":'
            b'"Config override \\"mcp_servers.x.command\\" is disabled in the cloud deployment."}}',
        )
        self.assertEqual((verdict.action, verdict.reason), ("block", "config_override"))
        self.assertEqual(
            judge_client_message(request("thread/start", 2, {"config": {"model": "m"}})), FORWARD
        )

    def test_config_override_roots(self) -> None:
        """
        Every forbidden first segment is refused for each guarded method; similar names pass.
        """
        for method in CONFIG_GUARDED_METHODS:
            for root in FORBIDDEN_CONFIG_ROOTS:
                for key in (root, root + ".x"):
                    with self.subTest(method=method, key=key):
                        verdict = judge_client_message(request(method, 1, {"config": {key: 1}}))
                        self.assertEqual((verdict.action, verdict.reason), ("block", "config_override"))
            for key in ("model", "mcp_serversx", "Profile", "x.mcp_servers", "model_reasoning_effort"):
                with self.subTest(method=method, key=key):
                    self.assertEqual(
                        judge_client_message(request(method, 1, {"config": {key: 1}})), FORWARD
                    )

    def test_config_override_first_key(self) -> None:
        """
        The message names the first offending key in document order.
        """
        raw = b'{"id":1,"method":"thread/fork","params":{"config":{"model":"m","hooks.a":1,"notify":2}}}'
        verdict = judge_client_message(raw)
        self.assertIn(b'Config override \\"hooks.a\\"', verdict.reply or b"")

    def test_config_override_duplicates(self) -> None:
        """
        A forbidden key hidden behind a duplicate (of the key, or of C{config}) is still found.
        """
        for raw in (
            b'{"id":1,"method":"thread/start","params":{"config":{"hooks":1},"config":{"model":"m"}}}',
            b'{"id":1,"method":"thread/start","params":{"config":{"profile":1,"profile":2}}}',
        ):
            with self.subTest(raw=raw):
                self.assertEqual(judge_client_message(raw).reason, "config_override")

    def test_config_not_object(self) -> None:
        """
        A C{config} that is not an object, or C{params} that is not one, passes; other methods' config
        is not checked.
        """
        cases: list[object] = [
            {"config": None},
            {"config": "mcp_servers"},
            {"config": ["hooks"]},
            [],
            "x",
        ]
        for params in cases:
            with self.subTest(params=params):
                self.assertEqual(judge_client_message(request("thread/start", 1, params)), FORWARD)
        self.assertEqual(
            judge_client_message(request("turn/start", 1, {"config": {"hooks": 1}})), FORWARD
        )

    def test_pass_through(self) -> None:
        """
        The methods the TUI needs are forwarded.
        """
        for method in PASS_THROUGH:
            with self.subTest(method=method):
                self.assertEqual(judge_client_message(request(method, 1, {})), FORWARD)
                self.assertEqual(judge_client_message(request(method, ...)), FORWARD)

    def test_batch(self) -> None:
        """
        A top-level array is dropped, whatever it holds.
        """
        for raw in (b"[]", b' [{"id":1,"method":"initialize"}]', b"[1,2]"):
            with self.subTest(raw=raw):
                self.assertEqual(judge_client_message(raw), ClientVerdict("drop", "batch"))

    def test_duplicate_key(self) -> None:
        """
        An object with a duplicated top-level key is dropped; nested duplicates are not this rule's.
        """
        for raw in (
            b'{"id":1,"method":"fs/readFile","method":"initialize"}',
            b'{"id":1,"id":2,"method":"initialize"}',
            b'{"method":"initialize","m\\u0065thod":"initialize"}',
        ):
            with self.subTest(raw=raw):
                self.assertEqual(judge_client_message(raw), ClientVerdict("drop", "duplicate key"))
        self.assertEqual(judge_client_message(b'{"id":1,"method":"x","params":{"a":1,"a":2}}'), FORWARD)

    def test_not_json(self) -> None:
        """
        Non-JSON, non-UTF-8, scalars and broken objects or arrays are forwarded.
        """
        for raw in (
            b"",
            b"hello",
            b"\x00\x01\xff",
            b'"fs/readFile"',
            b"42",
            b"null",
            b'{"id":1,"method":"fs/readFile"',
            b'[{"id":1}',
            b'{"id":1,"method":"fs/readFile","x":"\xff"}',
            b'{"id":1,"method":"fs/readFile"} x',
        ):
            with self.subTest(raw=raw):
                self.assertEqual(judge_client_message(raw), FORWARD)

    def test_escapes_and_bom(self) -> None:
        """
        A blocked method spelled with escapes, or after whitespace and a byte order mark, is blocked.
        """
        for raw in (
            b'{"id":1,"method":"fs\\/readFile"}',
            b'{"id":1,"method":"fs/read\\u0046ile"}',
            b'\xef\xbb\xbf {"id":1,"method":"fs/readFile"}',
            b'\r\n\t {"id":1,"method":"fs/readFile"}',
        ):
            with self.subTest(raw=raw):
                self.assertEqual(judge_client_message(raw).reason, "local_io")

    def test_deep_nesting(self) -> None:
        """
        Nesting too deep for Python's decoder is forwarded (codex cannot decode it either), without an
        exception.
        """
        raw = b'{"id":1,"method":"fs/readFile","params":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        self.assertEqual(judge_client_message(raw), FORWARD)

    def test_odd_ids(self) -> None:
        """
        Any non-null id is answered, echoed by value.
        """
        for request_id, text in (
            (1.5, b"1.5"),
            (True, b"true"),
            ({"a": 1}, b'{"a":1}'),
            ("\u00e9", '"\u00e9"'.encode()),
        ):
            with self.subTest(request_id=request_id):
                reply = judge_client_message(request("fs/remove", request_id)).reply or b""
                self.assertTrue(reply.startswith(b'{"jsonrpc":"2.0","id":' + text + b',"error":'))
        surrogate = judge_client_message(b'{"id":"\\ud800","method":"fs/remove"}').reply or b""
        self.assertTrue(surrogate.startswith(b'{"jsonrpc":"2.0","id":"\\ud800","error":'))

    @given(json_values)
    @example({"method": []})
    @example({"method": {"fs/remove": 1}})
    @settings(max_examples=300)
    def test_values_without_blocked_method_pass(self, value: object) -> None:
        """
        Any JSON value that is neither an array nor an object naming a blocked or guarded method is
        forwarded.
        """
        payload = encode(value)
        verdict = judge_client_message(payload)
        if isinstance(value, list):
            self.assertEqual(verdict, ClientVerdict("drop", "batch"))
        elif isinstance(value, dict) and any(
            value.get("method") == method for method in BLOCKED | CONFIG_GUARDED_METHODS
        ):
            self.assertNotEqual(verdict.action, "drop")
        else:
            self.assertEqual(verdict, FORWARD)

    @given(
        st.sampled_from(sorted(BLOCKED)),
        st.none() | st.integers() | st.text(max_size=10),
        st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    )
    @settings(max_examples=200)
    def test_blocked_reply_echoes_id(
        self, method: str, request_id: int | str | None, params: object
    ) -> None:
        """
        Every blocked request's reply echoes its id and names the spec's code; no id, no reply.
        """
        verdict = judge_client_message(request(method, request_id, params))
        self.assertEqual(verdict.action, "block")
        if request_id is None:
            self.assertIsNone(verdict.reply)
            return
        assert verdict.reply is not None
        reply = json.loads(verdict.reply)
        self.assertEqual(list(reply), ["jsonrpc", "id", "error"])
        self.assertEqual(reply["id"], request_id)
        self.assertEqual(reply["error"]["code"], -32601)

    @given(st.binary(max_size=80))
    @settings(max_examples=300)
    def test_never_raises(self, payload: bytes) -> None:
        """
        Arbitrary bytes always get a verdict.
        """
        self.assertIn(judge_client_message(payload).action, ("forward", "drop", "block"))
