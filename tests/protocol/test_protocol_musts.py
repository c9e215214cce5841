"""Every MUST of protocol.md, and the rules of §3, §5 and §8 it implies, held by a test a
hostile peer would fail.

``RULES`` maps each rule (a short stable key) to a fragment of its text, which must still be
in protocol.md, and to the tests that fail against a peer breaking it. The audit tests
parse protocol.md and fail when a MUST sentence, a §3 encoding rule, a §5 coordinator
check, a §8 error code or a §8 precedence step is claimed by no rule, when a fragment has
left the document, or when a referenced test does not exist. So a new MUST without a test
fails CI, and so does a test renamed away from its rule.

The tests below cover what no other test did:

- hostile coordinator bytes (raw frames built with ``struct`` and ``msgpack``) against the
  real ``mcpi-worker`` and against ``spec_worker.py``, a worker written from protocol.md
  alone;
- hostile workers against our coordinator: ``raw_worker.py FAULT`` breaks exactly one rule,
  and the pool must replace it (its bad answer never counted) and finish exact, or end
  with one clear line, never hang;
- our coordinator driving the spec worker: the real worker's counts, bit for bit, over
  protocol versions 1 and 2.

A reference ``file.py::test_name[case]`` names a parametrized case, or one of the cases a
table in that file lists for the test.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import re
import shlex
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from structlog.testing import capture_logs
from worker_pipes import serving_over_pipes
from worker_process import PATIENT_START_S, RAW_WORKER, SPEC_WORKER, worker_command

from mcpi_coordinator.errors import ChunkFailed, PoolExhausted, RequestFailed
from mcpi_coordinator.launch.local import spawn_worker
from mcpi_coordinator.launch.transport import WorkerProcess
from mcpi_coordinator.pool.chunks import Chunk, ChunkResult
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.client import WorkerClient, open_worker
from mcpi_coordinator.testing.inprocess import fake_launcher
from mcpi_worker.kernels import KERNELS
from mcpi_worker.protocol import (
    WORKER_MESSAGES,
    Error,
    ErrorCode,
    Pong,
    Result,
    Welcome,
    WorkerMessage,
    encode,
    parse_message,
)
from mcpi_worker.server import Worker

TESTS = Path(__file__).resolve().parents[1]
PROTOCOL_MD = TESTS.parent / "protocol.md"
TIMEOUT = 60  # seconds; reached only by a hang (CI is a loaded 2-core machine)
SEED = 20240601


@dataclass(frozen=True)
class Rule:
    fragment: str
    """Words of protocol.md (whitespace aside) that state the rule."""
    tests: tuple[str, ...]
    """``file.py::test`` (or ``file.py::test[case]``) that a peer breaking the rule fails."""


def rule(fragment: str, *tests: str) -> Rule:
    return Rule(fragment, tests)


M = "test_protocol_musts.py"
RULES: dict[str, Rule] = {
    # ---------------------------------------------------------------- §2 framing
    "frame_length_at_least_1": rule(
        "`length` MUST be at least 1",
        "test_contract.py::test_fatal_errors_send_one_nil_id_error_and_exit_3[empty]",
        "test_protocol.py::test_zero_length_frame_is_fatal",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[zero_length]",
    ),
    "frame_length_at_most_max_frame": rule(
        "and at most **`max_frame` = 1 048 576** (1 MiB)",
        "test_contract.py::test_fatal_errors_send_one_nil_id_error_and_exit_3[oversize]",
        "test_protocol.py::test_frame_of_exactly_the_limit_is_accepted",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[oversize_header]",
    ),
    "frame_length_within_welcome_max_frame": rule(
        "also at most the `welcome.max_frame` it announces",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[max_frame_40]",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[max_frame_14]",
        "test_connection_ends.py::test_no_notification_goes_past_the_max_frame_a_welcome_sets",
    ),
    "length_checked_before_the_body": rule(
        "A receiver MUST check the length as soon as the 4 header bytes have arrived",
        "test_worker.py::test_4_gib_length_prefix_is_fatal_with_bounded_memory",
        "test_hostile_worker.py::test_real_worker_memory_stays_bounded[4GiB-announced]",
        "test_protocol.py::test_oversize_length_is_fatal_before_the_body_arrives",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[oversize_header]",
    ),
    "body_is_one_msgpack_object": rule(
        "The body MUST be exactly one msgpack object",
        "test_protocol.py::test_trailing_bytes_inside_a_frame_are_fatal",
        "test_protocol.py::test_body_ending_inside_its_object_is_fatal",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[trailing_bytes]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[body_ends_early]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[trailing_bytes]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[body_ends_early]",
    ),
    "frames_written_whole": rule(
        "A sender MUST write each frame whole before any other frame",
        f"{M}::test_frames_from_several_threads_never_interleave",
        "test_worker_connection.py::test_frames_beyond_the_pipe_s_capacity_arrive_whole_and_in_order",
    ),
    "frames_split_across_reads": rule(
        "A receiver MUST accept a frame that arrives split at any byte",
        f"{M}::test_frames_split_across_reads_and_several_in_one_read_are_read_whole",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[split_frames]",
        "test_protocol.py::test_arbitrary_bytes_only_ever_raise_protocol_errors",
    ),
    "eof_inside_a_frame": rule(
        "**End of file inside a frame** (after 1 to 3 header bytes, or inside a body) is the fatal error",
        "test_contract.py::test_fatal_errors_send_one_nil_id_error_and_exit_3[truncated]",
        "test_protocol.py::test_eof_inside_a_frame_is_fatal",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[eof_mid_frame]",
    ),
    # ---------------------------------------------------------------- §3 encoding
    "top_level_map": rule(
        "The top-level object MUST be a map",
        "test_contract.py::test_fatal_errors_send_one_nil_id_error_and_exit_3[not-a-map]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[not_a_map]",
    ),
    "str_keys": rule(
        "Every map key, at every level, MUST be a msgpack **str**",
        "test_protocol.py::test_binary_map_keys_are_fatal",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[int_key_nested]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[bin_key_nested]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[bin_key]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[int_key]",
    ),
    "utf8": rule(
        "Strings MUST be valid UTF-8",
        "test_protocol.py::test_bad_utf8_is_fatal",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[bad_utf8_value]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[bad_utf8_key]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[surrogate]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[bad_utf8]",
    ),
    "no_extension_types": rule(
        "Extension types (including the timestamp extension) MUST NOT appear",
        "test_protocol.py::test_extension_types_are_fatal",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[ext_type]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[timestamp]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[ext_type]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[timestamp]",
    ),
    "nesting_at_most_16": rule(
        "Containers MUST NOT nest more than **16** levels deep",
        "test_protocol.py::test_nesting_up_to_the_limit_is_accepted",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[depth_17]",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[depth_16]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[too_deep]",
    ),
    "no_duplicate_keys": rule(
        "A map, at any level, MUST NOT hold the same key twice",
        "test_protocol.py::test_a_map_with_a_key_twice_is_malformed",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[duplicate_key]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[duplicate_key]",
    ),
    "type_key": rule(
        'The top-level map MUST have a key `"type"` whose value is a str',
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[no_type]",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[type_not_str]",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[nested_maps_need_no_type]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[no_type]",
    ),
    "unknown_keys_ignored": rule(
        "**Unknown keys are ignored**",
        "test_contract.py::test_per_request_errors_answer_by_id_and_the_worker_serves_on",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[unknown_key]",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[unknown_keys]",
    ),
    "integers_strict": rule(
        "an integer field MUST be a msgpack integer, and **booleans are not integers**",
        "test_worker.py::test_invalid_request_is_answered_and_the_worker_keeps_serving",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[seed_true]",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[seed_float]",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[id_uint64_encoding]",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[id_int8_encoding]",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[wide_encodings]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[bool_inside]",
    ),
    "floats_finite_non_negative": rule(
        "and MUST be finite and not negative",
        "test_protocol.py::test_elapsed_accepts_integers_and_float32",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[negative_zero_elapsed]",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[wide_encodings]",
        "test_bad_answers.py::test_a_bad_answer_replaces_the_worker_and_the_chunk_is_counted_elsewhere[nan]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[negative_elapsed]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[infinite_elapsed]",
    ),
    "text_and_array_limits": rule(
        "Text fields are msgpack str of at most **4096** *characters*, counted as Unicode code points",
        "test_protocol.py::test_text_limits",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[kernel_4096_code_points]",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[kernel_4097_code_points]",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[kernel_bin]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[long_message]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[long_kernels]",
    ),
    "optional_fields_present_are_typed": rule(
        "one that is present MUST hold a value of its type",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[streams_nil]",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[group_nil]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_hint_nil]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[implementation_nil]",
    ),
    "framing_rules_first": rule(
        "Rules 1–6 are checked first, for the whole frame",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[depth_17]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[bin_key_nested]",
    ),
    # ---------------------------------------------------------------- §4
    "unknown_type_from_the_peer": rule(
        "A receiver that gets a `type` it does not accept from its peer",
        "test_worker.py::test_invalid_request_is_answered_and_the_worker_keeps_serving",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[unknown_type]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[unknown_type_no_id]",
    ),
    "unknown_error_codes_accepted": rule(
        "Receivers MUST accept `error` codes they do not know",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[unknown_code]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[unknown_code_nil_id]",
        "test_protocol.py::test_round_trip",
    ),
    "coordinator_sends_only_its_messages": rule(
        "A coordinator MUST send only the messages of §4.1, on either version",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[unknown_type_without_id]",
    ),
    "welcome_max_points_at_most_2_40": rule(
        "`max_points`: an integer from 1 to 2⁴⁰",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[max_points_over_2_40]",
    ),
    # ---------------------------------------------------------------- §5 connection states
    "nothing_before_the_first_frame": rule(
        "The worker writes nothing until it has read a whole first frame",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[shutdown_first]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[cancel_without_id_first]",
        f"{M}::test_the_worker_writes_nothing_before_its_first_frame_is_whole",
        "test_golden.py::test_a_golden_ping_before_hello_is_refused_by_the_real_worker",
        "test_golden.py::test_the_real_worker_writes_the_golden_bytes",
        f"{M}::test_the_spec_worker_accepts_the_golden_frames",
    ),
    "highest_common_version": rule(
        "The worker MUST choose the highest version in `versions` that it also speaks",
        f"{M}::test_the_worker_chooses_the_highest_common_version_whatever_the_list",
        "test_node_peer.py::test_the_javascript_coordinator_finds_the_real_worker_keeps_every_rule_it_checks",
        "test_contract.py::test_unsupported_version_is_fatal",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_versions_unknown]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_versions_missing]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_versions_empty]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_versions_str]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_versions_65]",
    ),
    "await_hello": rule(
        "A `sample` or `ping` before `hello` is answered with the per-request error",
        "test_contract.py::test_requests_before_hello_are_refused",
        "test_worker.py::test_eof_before_hello_exits_0",
        "test_node_peer.py::test_the_javascript_coordinator_finds_the_real_worker_keeps_every_rule_it_checks",
        f"{M}::test_precedence_on_a_version_1_connection",
    ),
    "coordinator_checks_the_version": rule(
        "The coordinator MUST check that `welcome.version` is one it offered",
        "test_pool.py::test_a_crash_loop_at_start_ends_with_one_clear_error[bad-version]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[version_not_offered]",
    ),
    "coordinator_sends_only_what_the_welcome_allows": rule(
        "MUST NOT send requests the `welcome` rules out",
        "test_pool.py::test_an_unoffered_kernel_is_refused_with_a_clear_error",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[max_points_1000]",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[max_frame_40]",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[max_inflight_1]",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[version_1_only]",
        f"{M}::test_the_pool_gets_the_real_worker_s_counts_from_the_spec_worker_on_versions_1_and_2",
    ),
    "second_hello_fatal": rule(
        "A second `hello` is a fatal `invalid_request` error",
        "test_contract.py::test_fatal_errors_send_one_nil_id_error_and_exit_3[second-hello]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[second_hello_bad_versions]",
    ),
    "fatal_error_then_nothing": rule(
        "A worker that detects it writes one `error` with `id: nil` where it can, writes nothing after it",
        "test_contract.py::test_fatal_errors_send_one_nil_id_error_and_exit_3",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal",
    ),
    "coordinator_checks_every_message": rule(
        "It MUST check every message from the worker completely before acting on it",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted",
        "test_bad_answers.py::test_a_bad_answer_replaces_the_worker_and_the_chunk_is_counted_elsewhere",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[welcome_without_version]",
    ),
    "check_second_welcome": rule(
        "a second `welcome`, or any other message before the `welcome`",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[second_welcome]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[before_welcome]",
    ),
    "check_version_offered": rule(
        "a `welcome.version` it did not offer",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[version_not_offered]",
    ),
    "check_welcome_jobs_and_implementations": rule(
        "a `welcome.jobs` above its `max_inflight` or above 1024; a `welcome.implementations` neither",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[jobs_over_max_inflight]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[jobs_1025]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[implementations_short]",
    ),
    "jobs_at_most_max_inflight": rule(
        "it MUST NOT exceed `max_inflight`",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[jobs_over_max_inflight]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[jobs_1025]",
        "test_connection_ends.py::test_a_serial_worker_overstating_its_jobs_is_not_taken_for_a_stalled_one",
        "test_hostile_failures.py::test_a_serial_worker_announcing_1024_jobs_is_not_killed_for_what_it_only_queued",
    ),
    "check_fatal_errors": rule(
        "an `error` with a nil `id`, or with a fatal code (§8)",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[unknown_code_nil_id]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[fatal_code_with_id]",
    ),
    "check_ids_outstanding": rule(
        "a response whose `id` is not outstanding (never sent, or already finally answered)",
        "test_pool.py::test_a_response_to_an_unknown_id_fails_the_worker_not_the_caller",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[unknown_id]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[answered_twice]",
    ),
    "check_answer_kind": rule(
        "a `pong` answering a `sample`, or a `result` answering a `ping`",
        "test_bad_answers.py::test_a_bad_answer_replaces_the_worker_and_the_chunk_is_counted_elsewhere[pong]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[pong_for_sample]",
        f"{M}::test_a_ping_answered_with_a_result_breaks_the_worker",
    ),
    "check_points_and_inside": rule(
        "a `result` whose `points` differ from its request's, or whose `inside` exceeds its `points`",
        "test_bad_answers.py::test_a_bad_answer_replaces_the_worker_and_the_chunk_is_counted_elsewhere[points]",
        "test_bad_answers.py::test_a_bad_answer_replaces_the_worker_and_the_chunk_is_counted_elsewhere[inside]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[points_differ]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[inside_exceeds]",
    ),
    "check_eof": rule(
        "end of file on stdout before the `welcome`, while requests are outstanding, or before the coordinator ended",
        "test_connection_ends.py::test_end_of_file_before_shutdown_breaks_the_worker_even_with_nothing_outstanding",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[eof_outstanding]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[eof_before_welcome]",
        "test_pool.py::test_a_crash_loop_at_start_ends_with_one_clear_error[exit-7]",
    ),
    "broken_worker_requests_sent_again_never_counted": rule(
        "An answer that breaks a rule is never counted",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted",
        f"{M}::test_mcpi_estimate_ends_with_one_line_when_every_worker_breaks_a_rule",
        "test_bad_answers.py::test_the_cli_finishes_exact_when_the_first_worker_answers_badly",
    ),
    # ---------------------------------------------------------------- §6 requests
    "usable_id": rule(
        "A **usable id** is what a receiver can report a bad message under",
        "test_protocol.py::test_an_id_on_a_message_never_answered_by_id_is_not_usable",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[cancel_id_not_uint64]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[cancel_without_id_first]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_with_id_and_bad_versions]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[shutdown_with_a_junk_id]",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[no_type]",
    ),
    "ids_never_reused": rule(
        "an unsigned 64-bit integer that MUST be **unique for the life of the connection and never reused**",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets",
        "test_connection_ends.py::test_request_ids_count_up_and_are_never_reused",
    ),
    "one_final_response": rule(
        "The worker answers each request with **exactly one final response**",
        "test_contract.py::test_cancel_gives_exactly_one_final_response",
        "test_hostile_worker.py::test_real_worker_keeps_the_protocols_promises",
    ),
    "max_inflight": rule(
        "At most `max_inflight` `sample` requests may be outstanding",
        "test_worker.py::test_busy_beyond_max_inflight",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[max_inflight_1]",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[version_1_only]",
        f"{M}::test_the_pool_gets_the_real_worker_s_counts_from_the_spec_worker_on_versions_1_and_2",
    ),
    "duplicate_id": rule(
        "A request whose `id` equals that of a request still outstanding",
        "test_worker.py::test_duplicate_id_is_refused_and_the_original_still_answered",
        f"{M}::test_pings_and_samples_share_one_id_space_and_a_cancel_reaches_only_what_was_read",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[duplicate_before_kernel]",
    ),
    "worker_stays_responsive": rule(
        "A worker MUST keep reading its input while it computes, so that a `ping` is answered",
        "test_hostile_ranges.py::test_a_worker_holding_a_range_answers_ping_and_obeys_cancel_shutdown_and_eof",
        "test_hostile_ranges.py::test_a_worker_computing_the_largest_range_answers_ping_and_obeys_shutdown",
        "test_hostile_ranges.py::test_a_range_whose_kernel_never_looks_at_its_stop_flag_sees_it_between_slices",
    ),
    # ---------------------------------------------------------------- §6.1 ranges
    "range_refused_on_version_1": rule(
        "A worker MUST refuse a range on a version-1 connection",
        "test_worker.py::test_a_range_needs_version_2_and_stays_within_the_limits",
        f"{M}::test_precedence_on_a_version_1_connection",
        "test_node_peer.py::test_the_javascript_coordinator_finds_the_real_worker_keeps_every_rule_it_checks",
    ),
    "range_definition": rule(
        "`streams: 1` without `group` is a plain sample",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[streams_1_is_plain]",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[group_1_is_a_range]",
        f"{M}::test_precedence_on_a_version_1_connection",
    ),
    "range_stream_limit": rule(
        "`stream` + `streams` − 1 MUST NOT exceed 2⁶⁴−1",
        "test_worker.py::test_a_range_needs_version_2_and_stays_within_the_limits",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[range_past_2_64]",
    ),
    "range_streams_bounded": rule(
        "`streams` MUST NOT exceed **1 048 576**",
        "test_hostile_ranges.py::test_the_worker_end_refuses_a_range_above_max_streams_and_takes_the_largest",
        "test_hostile_ranges.py::test_the_coordinator_end_never_sends_a_range_a_worker_must_refuse",
        "test_hostile_ranges.py::test_a_range_of_2_64_zero_point_streams_is_refused_and_the_worker_serves_on",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[streams_over_2_20]",
    ),
    "range_points_and_groups": rule(
        "`streams` × `points` MUST NOT exceed the worker's `max_points`",
        "test_worker.py::test_a_range_needs_version_2_and_stays_within_the_limits",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[range_over_max_points]",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[groups_4097]",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[groups_4096]",
    ),
    "coordinator_checks_insides": rule(
        "The coordinator MUST check, besides §5's checks, that `insides` is present for a range",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[insides_missing]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[insides_on_plain]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[insides_wrong_length]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[group_over_points]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[insides_bad_sum]",
    ),
    # ---------------------------------------------------------------- §7 cancellation
    "wait_for_the_final_response": rule(
        "the coordinator MUST wait for it before forgetting the id",
        "test_pool.py::test_leaving_imap_early_cancels_the_rest_and_the_pool_stays_usable",
        f"{M}::test_a_cancelled_range_is_waited_for_and_the_spec_worker_serves_on",
    ),
    # ---------------------------------------------------------------- §8 errors
    "refusal_for_good_breaks_the_welcome": rule(
        "MAY take a per-request error that is not retryable in answer to one of them",
        "test_connection_ends.py::test_a_refusal_for_good_of_a_request_its_welcome_admits_breaks_the_worker",
        *(
            f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[{fault}]"
            for fault in ("unknown_code", "refuse_offered_kernel", "refuse_valid", "refuse_fresh_id",
                          "refuse_after_welcome")
        ),
        f"{M}::test_a_chunk_every_worker_refuses_ends_with_one_line_naming_the_code",
        "test_refusals.py::test_one_worker_refusing_for_good_is_replaced_and_every_chunk_is_counted_once",
        "test_hostile_workers.py::test_a_worker_refusing_for_good_a_request_its_welcome_admits_is_one_failure",
    ),
    "error_nil_id_fatal": rule(
        "**An error with a nil id is always fatal**",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[unknown_code_nil_id]",
    ),
    "code_invalid_request": rule(
        "| `invalid_request` | per-request | no |",
        "test_worker.py::test_invalid_request_is_answered_and_the_worker_keeps_serving",
        "test_worker.py::test_request_without_a_usable_id_is_fatal",
    ),
    "code_unknown_type": rule(
        "| `unknown_type` | per-request | no |",
        "test_contract.py::test_per_request_errors_answer_by_id_and_the_worker_serves_on",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[unknown_type_without_id]",
    ),
    "code_unknown_kernel": rule(
        "| `unknown_kernel` | per-request | no |",
        "test_contract.py::test_per_request_errors_answer_by_id_and_the_worker_serves_on",
    ),
    "code_handshake_required": rule(
        "| `handshake_required` | per-request |",
        "test_contract.py::test_requests_before_hello_are_refused",
    ),
    "code_duplicate_id": rule(
        "| `duplicate_id` | per-request | no |",
        "test_contract.py::test_per_request_errors_answer_by_id_and_the_worker_serves_on",
    ),
    "code_busy": rule(
        "| `busy` | per-request | **yes**",
        "test_worker.py::test_busy_beyond_max_inflight",
        "test_contract.py::test_per_request_errors_answer_by_id_and_the_worker_serves_on",
    ),
    "code_cancelled": rule(
        "| `cancelled` | per-request | **yes** |",
        "test_contract.py::test_cancel_gives_exactly_one_final_response",
        "test_worker.py::test_shutdown_answers_everything_outstanding_and_exits_0",
    ),
    "code_internal": rule(
        "| `internal` | per-request | **yes** |",
        "test_worker.py::test_a_failing_kernel_fails_one_request_and_the_worker_goes_on",
        "test_pool.py::test_retryable_worker_errors_are_retried_without_a_restart",
    ),
    "code_malformed_frame": rule(
        "| `malformed_frame` | fatal |",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal",
    ),
    "code_frame_too_large": rule(
        "| `frame_too_large` | fatal |",
        "test_contract.py::test_fatal_errors_send_one_nil_id_error_and_exit_3[oversize]",
    ),
    "code_truncated_frame": rule(
        "| `truncated_frame` | fatal |",
        "test_contract.py::test_fatal_errors_send_one_nil_id_error_and_exit_3[truncated]",
    ),
    "code_unsupported_version": rule(
        "| `unsupported_version` | fatal |",
        "test_contract.py::test_unsupported_version_is_fatal",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_versions_unknown]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[only_version_3]",
        f"{M}::test_mcpi_estimate_ends_with_one_line_when_every_worker_breaks_a_rule[only_version_3]",
    ),
    "precedence_framing": rule(
        "1. framing and encoding, §2 and §3 rules 1–6",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[bin_key_nested]",
    ),
    "precedence_type": rule(
        "2. `type` missing or not a str (`invalid_request`); `type` not accepted (`unknown_type`)",
        f"{M}::test_precedence_on_a_version_1_connection",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[type_not_str]",
    ),
    "precedence_fields": rule(
        "3. each field of the message, in the order of the tables in §4",
        f"{M}::test_precedence_on_a_version_1_connection",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[first_bad_field_named]",
    ),
    "size_hint_changes_no_count": rule(
        "A worker MUST NOT let the hint change any count",
        "test_kernel_worker.py::test_a_long_hinted_run_counts_in_the_lanes_from_its_first_sample",
        "test_kernel_choice.py::test_a_short_hint_loads_nothing",
        "test_kernel_choice.py::test_a_sample_waiting_for_a_hinted_load_is_cancelled",
    ),
    "size_hint_must_be_uint64": rule(
        "breaks §3/§4 and MUST be refused with the fatal `invalid_request`",
        "test_protocol.py::test_a_hello_with_a_bad_size_hint_is_fatal",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_hint_string]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_hint_negative]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_hint_float]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_hint_bool]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_hint_nil]",
    ),
    "precedence_hello": rule(
        "4. `hello` when already serving (fatal `invalid_request`)",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[second_hello_bad_versions]",
    ),
    "precedence_handshake": rule(
        "5. a request before `hello` (`handshake_required`)",
        f"{M}::test_precedence_on_a_version_1_connection",
    ),
    "precedence_duplicate": rule(
        "6. an `id` still outstanding (`duplicate_id`)",
        f"{M}::test_precedence_on_a_version_1_connection",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[duplicate_before_kernel]",
    ),
    "precedence_kernel_and_range": rule(
        "7. a `kernel` not offered (`unknown_kernel`); then, as `invalid_request`",
        f"{M}::test_precedence_on_a_version_1_connection",
    ),
    "precedence_busy": rule(
        "8. `max_inflight` samples already outstanding (`busy`)",
        f"{M}::test_precedence_on_a_version_1_connection",
    ),
    "error_messages_bounded": rule(
        "An error's `message` MUST be one line of at most 4096 characters",
        "test_worker.py::test_a_huge_value_gets_a_bounded_error_and_the_worker_goes_on",
        f"{M}::test_a_kernel_s_multi_line_exception_is_answered_in_one_bounded_line",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[multiline_message]",
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on[kernel_4096_code_points]",
    ),
    # ---------------------------------------------------------------- §9 shutdown
    "queued_not_computed_on_shutdown": rule(
        "It then answers every queued request `cancelled` at once",
        "test_worker.py::test_shutdown_answers_everything_outstanding_and_exits_0",
        "test_contract.py::test_stdin_eof_cancels_outstanding_work_and_exits_0",
    ),
    "nothing_after_shutdown": rule(
        "a coordinator MUST NOT send anything after `shutdown`",
        "test_connection_ends.py::test_nothing_follows_shutdown",
        f"{M}::test_the_worker_reads_nothing_after_shutdown",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets",
    ),
    "coordinator_reaps": rule(
        "MUST always wait for (reap) the process whatever happens",
        "test_orphans.py::test_sigkilled_parent_leaves_no_busy_worker_behind",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted",
    ),
    "coordinator_reads_while_stopping": rule(
        "It MUST keep reading the worker's stdout and stderr during all of this",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[stderr_flood_on_shutdown]",
    ),
    "sigterm_before_sigkill": rule(
        "but still send SIGTERM first, and SIGKILL only after the second grace period",
        f"{M}::test_a_worker_given_up_on_gets_sigterm_before_sigkill",
        "test_pool.py::test_a_hung_worker_is_stopped_at_the_task_timeout",
        "test_pool.py::test_a_worker_ignoring_shutdown_and_sigterm_is_killed",
    ),
    # ---------------------------------------------------------------- §10 the process
    "stderr_lines_not_json": rule(
        "Consumers MUST also accept lines that are not JSON",
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[stderr_not_json]",
        "test_hostile_workers.py::test_a_stderr_flood_without_newlines_and_with_1_mib_lines_keeps_the_coordinator_small",
    ),
    "stderr_drained": rule(
        "The coordinator MUST drain stderr continuously",
        "test_pool.py::test_stderr_is_drained_while_stdout_is_busy",
    ),
    # ---------------------------------------------------------------- §12, §13
    "golden_frames_accepted": rule(
        "An implementation of this protocol MUST accept each frame as the message shown",
        "test_golden.py::test_code_accepts_and_produces_exactly_the_golden_bytes",
        "test_node_peer.py::test_the_javascript_coordinator_finds_the_real_worker_keeps_every_rule_it_checks",
        f"{M}::test_the_spec_worker_accepts_the_golden_frames",
    ),
    "golden_kernel_table": rule(
        "A worker offering a kernel MUST reproduce its rows exactly",
        "test_golden.py::test_kernels_reproduce_the_golden_table",
        "test_node_peer.py::test_the_javascript_coordinator_finds_the_real_worker_keeps_every_rule_it_checks",
        f"{M}::test_the_spec_worker_reproduces_the_golden_kernel_table",
    ),
}

NEGOTIATION: dict[str, tuple[str, ...]] = {
    "a coordinator offering only version 1 (`versions: [1]`) gets version 1 from our worker, "
    "which refuses a range and serves plain samples": (
        f"{M}::test_precedence_on_a_version_1_connection",
        "test_c_peer.py::test_the_c_client_finds_the_real_worker_keeps_every_rule_it_checks",
    ),
    "a coordinator offering versions 1 and 2 gets version 2, and ranges": (
        f"{M}::test_per_request_rules_answer_by_id_and_the_worker_serves_on",
        "test_node_peer.py::test_the_javascript_coordinator_finds_the_real_worker_keeps_every_rule_it_checks",
    ),
    "a coordinator offering versions our worker does not know: the highest common one, or the "
    "fatal `unsupported_version` when there is none": (
        f"{M}::test_the_worker_chooses_the_highest_common_version_whatever_the_list",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_versions_unknown]",
        "test_contract.py::test_unsupported_version_is_fatal",
    ),
    "a coordinator offering no version (`versions` missing, empty, not positive integers, over "
    "64 entries): the fatal `invalid_request`": (
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_versions_missing]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_versions_empty]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_versions_str]",
        f"{M}::test_a_frame_breaking_an_encoding_rule_is_fatal[hello_versions_65]",
    ),
    "our coordinator and a worker speaking only version 1: no range ever reaches it, the counts "
    "are the same": (
        f"{M}::test_the_coordinator_keeps_the_limits_a_welcome_sets[version_1_only]",
        f"{M}::test_the_pool_gets_the_real_worker_s_counts_from_the_spec_worker_on_versions_1_and_2",
        f"{M}::test_mcpi_estimate_with_the_spec_worker_gives_the_real_worker_s_count",
        "test_c_peer.py::test_mcpi_estimate_drives_the_c_worker_to_the_real_workers_counts",
    ),
    "our coordinator and a worker choosing a version we did not offer, or none": (
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[version_not_offered]",
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[welcome_without_version]",
    ),
    "our coordinator and a worker speaking only a version we do not know (it answers our hello "
    "`unsupported_version`): replaced, and `mcpi estimate` ends with one line naming the code": (
        f"{M}::test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted[only_version_3]",
        f"{M}::test_mcpi_estimate_ends_with_one_line_when_every_worker_breaks_a_rule[only_version_3]",
    ),
}
"""Version negotiation (protocol.md §5) end to end, each way, and the tests that show it."""

EXEMPT: dict[str, str] = {
    "The key words MUST, MUST NOT, SHOULD and MAY are used as in RFC 2119": "the key words' own definition",
}
"""MUST sentences that state no rule, with the reason."""


# ------------------------------------------------------------------ reading protocol.md


def normalized(text: str) -> str:
    return " ".join(text.split())


@cache
def protocol_text() -> str:
    return PROTOCOL_MD.read_text(encoding="utf-8")


def blocks(text: str) -> list[str]:
    """Paragraphs, list items and table rows outside code blocks, each on one line."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    found: list[str] = []
    current: list[str] = []
    for line in prose.splitlines():
        starts_block = not line.strip() or line.startswith("#") or re.match(r"\s*(?:[-*] |\d+\. |\|)", line)
        if starts_block and current:
            found.append(normalized(" ".join(current)))
            current = []
        if line.strip() and not line.startswith("#"):
            current.append(line)
    if current:
        found.append(normalized(" ".join(current)))
    return found


def sections(text: str) -> dict[str, str]:
    """The text of each ``## N. Title`` section, by its number."""
    parts = re.split(r"^## (\d+)\. .*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def must_sentences() -> list[str]:
    sentences = []
    for block in blocks(protocol_text()):
        for sentence in re.split(r"(?<=[.;])\s+(?=[A-Z*`(])", block):
            if re.search(r"\bMUST\b", sentence):
                sentences.append(sentence)
    return sentences


def implied_rules() -> dict[str, list[str]]:
    """The rules a MUST of §3, §5 and §8 stands for, one list item or table row each."""
    by_section = sections(protocol_text())
    encoding = [b for b in blocks(by_section["3"]) if re.match(r"\d+\. ", b)]
    errors = blocks(by_section["8"])
    codes = [b for b in errors if re.match(r"\| `[a-z_]+` \|", b)]
    precedence_at = next(i for i, b in enumerate(errors) if b.startswith("**Precedence.**"))
    precedence = [b for b in errors[precedence_at:] if re.match(r"\d+\. ", b)]
    states = blocks(by_section["5"])
    checks_at = next(i for i, b in enumerate(states) if "treat the worker as broken when" in b)
    checks = []
    for block in states[checks_at + 1 :]:
        if not block.startswith("- "):
            break
        checks.append(block)
    assert len(encoding) == 13 and len(codes) == 12 and len(precedence) == 8 and len(checks) == 7, (
        "protocol.md's lists changed shape: update implied_rules()"
    )
    return {"§3 rule": encoding, "§8 code": codes, "§8 precedence step": precedence, "§5 check": checks}


def claimed(text: str) -> bool:
    return any(normalized(r.fragment) in text for r in RULES.values())


def test_every_must_in_protocol_md_has_a_rule() -> None:
    sentences = must_sentences()
    assert len(sentences) >= 25, "the MUST sentences were not found: has protocol.md's layout changed?"
    unclaimed = [s for s in sentences if not claimed(s) and not any(e in s for e in EXEMPT)]
    assert unclaimed == [], "MUST sentences with no rule (and no test) in RULES:\n" + "\n".join(unclaimed)


def test_every_rule_of_section_3_5_and_8_has_a_rule() -> None:
    unclaimed = [f"{kind}: {text}" for kind, items in implied_rules().items() for text in items if not claimed(text)]
    assert unclaimed == [], "rules of §3/§5/§8 with no entry in RULES:\n" + "\n".join(unclaimed)


def test_every_rule_is_still_in_protocol_md() -> None:
    text = normalized(protocol_text())
    gone = [key for key, r in RULES.items() if normalized(r.fragment) not in text]
    assert gone == [], f"these rules' text is no longer in protocol.md: {gone}"
    assert all(e in text for e in EXEMPT)


DOCS_PAGE = TESTS.parent / "docs" / "protocol-tests.md"
UPDATE_DOCS = "MCPI_UPDATE_DOCS"
"""Set to 1 to have ``test_the_docs_page_lists_every_rule_and_its_tests`` write the page."""


def section_titles() -> dict[str, str]:
    return dict(re.findall(r"^## (\d+)\. (.*)$", protocol_text(), flags=re.M))


def section_of(fragment: str) -> str:
    """The number of the protocol.md section (``## N.``) that holds ``fragment``."""
    found = [n for n, text in sections(protocol_text()).items() if normalized(fragment) in normalized(text)]
    assert found, fragment
    return found[0]


def as_markdown(fragment: str) -> str:
    """``fragment`` as inline Markdown: as written when its backticks and bold marks pair
    up, else in plain words (a fragment may begin or end inside a marked span)."""
    text = normalized(fragment)
    if text.count("`") % 2 == 0 and text.count("**") % 2 == 0 and not text.startswith("|"):
        return text
    return text.replace("`", "").replace("**", "").replace("|", "/").strip(" /")


def docs_page() -> str:
    """docs/protocol-tests.md: every rule of ``RULES`` under its protocol.md section, in
    the order of the document, with the tests that hold it."""
    titles = section_titles()
    texts = {number: normalized(text) for number, text in sections(protocol_text()).items()}

    def place(key: str) -> tuple[int, int]:
        number = section_of(RULES[key].fragment)
        return int(number), texts[number].index(normalized(RULES[key].fragment))

    order = sorted(RULES, key=place)
    lines = [
        "# Every MUST of the protocol, and its tests",
        "",
        "% Generated from RULES in tests/protocol/test_protocol_musts.py: do not edit by hand.",
        f"% Rewrite it with: {UPDATE_DOCS}=1 python -m pytest tests/protocol/test_protocol_musts.py -k docs_page",
        "",
        "Each rule of [the wire protocol](protocol.md) that says MUST or MUST NOT, each encoding",
        "rule of its §3, each check a coordinator makes (§5), each error code and each step of the",
        "error precedence (§8) is listed here with the tests that a peer breaking it fails. The",
        "list is `RULES` in `tests/protocol/test_protocol_musts.py`; its audit tests parse",
        "protocol.md and fail when a MUST sentence or one of those rules is claimed by no rule,",
        "when a rule's words have left protocol.md, or when a test named here does not exist,",
        "and `test_the_docs_page_lists_every_rule_and_its_tests` fails when this page is not",
        "what `RULES` says. So a new MUST without a test fails CI.",
        "",
        "The peers the tests drive, as processes speaking raw bytes on their pipes:",
        "",
        "- the real `mcpi-worker`, and two workers written from protocol.md alone:",
        "  `tests/spec_worker.py` (Python, importing nothing of mcpi) and the C peer",
        "  (`tests/protocol/peers/mcpi_peer.c`); the tests that take the `peer` fixture run",
        "  against all three, writing hostile frames built byte by byte;",
        "- our coordinator (`WorkerPool`, `mcpi estimate`) against `tests/raw_worker.py FAULT`,",
        "  a worker that breaks exactly one rule (or, for the `keeps_the_limits` cases, keeps",
        "  every rule and watches that the coordinator keeps its own: the limits its `welcome`",
        "  sets, only the messages of §4.1, nothing after `shutdown`); each case runs on a",
        "  version-2 connection and, as `case-v1`, on a version-1 one (but for a range's counts",
        "  per group: no range goes to a version-1 worker);",
        "- the real `mcpi-worker` driven by coordinators written from protocol.md alone: the C",
        "  peer's client and a JavaScript one (`tests/protocol/peers/mcpi_coordinator.mjs`, run",
        "  by `test_node_peer.py`), each with its own strict msgpack decoder;",
        "- the protocol core (`mcpi_worker/protocol/`) alone, fed bytes and clock readings.",
        "",
        "A test named `file.py::test[case]` is one case of a parametrized test (or one of the",
        "cases a table in that file lists for it); `file.py::test` is every case.",
    ]
    lines += ["", "## Version negotiation", "", "[protocol.md §5](protocol.md#5-connection-states), each way:", ""]
    for scenario, tests in NEGOTIATION.items():
        lines.append(f"- {scenario}")
        lines += [f"  - `{test}`" for test in tests]
    current = None
    for key in order:
        rule = RULES[key]
        number = section_of(rule.fragment)
        if number != current:
            current = number
            anchor = re.sub(r"[^a-z0-9 -]", "", f"{number}. {titles[number]}".lower()).replace(" ", "-")
            lines += ["", f"## §{number} {titles[number]}", "", f"[protocol.md §{number}](protocol.md#{anchor})", ""]
        lines.append(f"- {as_markdown(rule.fragment)} (`{key}`)")
        lines += [f"  - `{test}`" for test in rule.tests]
    if EXEMPT:
        lines += ["", "## Sentences with MUST that state no rule", ""]
        lines += [f"- {as_markdown(sentence)}: {why}" for sentence, why in EXEMPT.items()]
    return "\n".join(lines) + "\n"


def test_the_docs_page_lists_every_rule_and_its_tests() -> None:
    page = docs_page()
    if os.environ.get(UPDATE_DOCS) == "1":
        DOCS_PAGE.write_text(page, encoding="utf-8")
    assert DOCS_PAGE.read_text(encoding="utf-8") == page, (
        f"{DOCS_PAGE.name} is stale: {UPDATE_DOCS}=1 python -m pytest {Path(__file__).name} -k docs_page"
    )


def module_path(file: str) -> Path | None:
    """The test module named ``file``: RULES name modules by file name, and tests/ keeps
    them in subdirectories under names that are unique (pytest imports them by name)."""
    found = list(TESTS.glob(f"*/{file}"))
    return found[0] if len(found) == 1 else None


@cache
def defined_tests(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    )


def test_every_rule_names_tests_that_exist() -> None:
    missing = []
    for key, r in [*RULES.items(), *((scenario, Rule("", tests)) for scenario, tests in NEGOTIATION.items())]:
        assert r.tests, f"rule {key} has no test"
        for reference in r.tests:
            match = re.fullmatch(r"([\w.]+\.py)::(test_\w+)(?:\[([\w-]+)\])?", reference)
            assert match, f"{key}: {reference!r} is not file.py::test_name[case]"
            file, name, case = match.groups()
            path = module_path(file)
            if path is None or name not in defined_tests(path) or (
                case is not None and f'"{case}"' not in path.read_text(encoding="utf-8")
            ):
                missing.append(reference)
    assert missing == [], f"referenced tests that do not exist: {missing}"


# ------------------------------------------------------------------ hostile coordinator bytes


def frame(body: Any) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


def raw(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def with_pair(body: dict[str, Any], key: bytes, value: bytes) -> bytes:
    """``body`` as a msgpack fixmap with one more pair, given as raw msgpack bytes."""
    packed = msgpack.packb(body)
    assert packed[0] == 0x80 | len(body)
    return bytes([0x80 | (len(body) + 1)]) + packed[1:] + key + value


def nested(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


PING = {"type": "ping", "id": 1}
HELLO_V2 = frame({"type": "hello", "versions": [1, 2], "client": "hostile"})
HELLO_HINT = {"type": "hello", "versions": [1, 2], "client": "hostile"}
"""A hello to add a bad size hint to (protocol.md §5.1)."""


def sample(id: int, **fields: Any) -> dict[str, Any]:
    return {"type": "sample", "id": id, "seed": SEED, "stream": 0, "points": 1000, "kernel": "numpy", **fields}


PEERS: dict[str, list[str]] = {
    "mcpi-worker": worker_command(),
    "spec-worker": [sys.executable, SPEC_WORKER],
}


@pytest.fixture(params=[*sorted(PEERS), "c-peer"])
def peer(request: pytest.FixtureRequest) -> list[str]:
    """The command of a worker under test: the real one, and the two written from the spec
    (in Python, and in C: ``tests/protocol/test_c_peer.py``)."""
    if request.param == "c-peer":
        return [str(request.getfixturevalue("c_peer")), "worker"]
    return PEERS[request.param]


async def send_quietly(client: WorkerClient, data: bytes) -> None:
    """Write ``data``; a worker that stopped reading after a fatal error is no failure."""
    try:
        await client.send_bytes(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def finish(client: WorkerClient, process: trio.Process) -> tuple[list[WorkerMessage], int]:
    """Close stdin; every message until EOF, and the exit status."""
    try:
        await client.close_stdin()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return await client.receive_until_eof(), await process.wait()


FATAL_FRAMES: dict[str, tuple[bytes, str, bool]] = {
    # case: (bytes, the fatal code, sent before the handshake)
    "trailing_bytes": (raw(msgpack.packb(PING) + b"\xc0"), "malformed_frame", False),
    "body_ends_early": (raw(msgpack.packb(PING)[:-1]), "malformed_frame", False),
    "int_key_nested": (frame({**PING, "x": {1: 2}}), "malformed_frame", False),
    "bin_key_nested": (frame({**PING, "x": [{b"k": 1}]}), "malformed_frame", False),
    "bad_utf8_value": (raw(with_pair(PING, msgpack.packb("x"), b"\xa2\xff\xfe")), "malformed_frame", False),
    "bad_utf8_key": (raw(with_pair(PING, b"\xa2\xc3\x28", msgpack.packb(1))), "malformed_frame", False),
    "surrogate": (raw(with_pair(PING, msgpack.packb("x"), b"\xa3\xed\xa0\x80")), "malformed_frame", False),
    "ext_type": (frame({**PING, "x": msgpack.ExtType(5, b"data")}), "malformed_frame", False),
    "timestamp": (frame({**PING, "x": msgpack.Timestamp(1)}), "malformed_frame", False),
    "depth_17": (frame({**PING, "x": nested(16)}), "malformed_frame", False),
    "duplicate_key": (raw(with_pair(PING, msgpack.packb("id"), msgpack.packb(2))), "malformed_frame", False),
    "unknown_type_without_id": (frame({"type": "frobnicate"}), "unknown_type", False),
    "cancel_id_not_uint64": (frame({"type": "cancel", "id": "1"}), "invalid_request", False),
    "cancel_without_id_first": (frame({"type": "cancel"}), "invalid_request", True),
    "shutdown_first": (frame({"type": "shutdown"}), "", True),
    "hello_with_id_and_bad_versions": (
        frame({"type": "hello", "id": 7, "versions": [], "client": "x"}), "invalid_request", True,
    ),
    "second_hello_bad_versions": (frame({"type": "hello", "versions": [0], "client": "x"}), "invalid_request", False),
    # §5 version negotiation: a hello offering no version (none, an empty list, not a list
    # of positive integers, more than 64) is a bad hello, not one with no common version
    "hello_versions_missing": (frame({"type": "hello", "client": "x"}), "invalid_request", True),
    "hello_versions_empty": (frame({"type": "hello", "versions": [], "client": "x"}), "invalid_request", True),
    "hello_versions_str": (frame({"type": "hello", "versions": ["2"], "client": "x"}), "invalid_request", True),
    "hello_versions_65": (frame({"type": "hello", "versions": [2] * 65, "client": "x"}), "invalid_request", True),
    "hello_versions_unknown": (
        frame({"type": "hello", "versions": [3, 2**64 - 1], "client": "x"}), "unsupported_version", True,
    ),
    "hello_hint_string": (frame({**HELLO_HINT, "expected_points": "1e9"}), "invalid_request", True),
    "hello_hint_negative": (frame({**HELLO_HINT, "expected_points": -1}), "invalid_request", True),
    "hello_hint_float": (frame({**HELLO_HINT, "expected_points": 1e9}), "invalid_request", True),
    "hello_hint_bool": (frame({**HELLO_HINT, "expected_points": True}), "invalid_request", True),
    "hello_hint_nil": (frame({**HELLO_HINT, "expected_points": None}), "invalid_request", True),
    "shutdown_with_a_junk_id": (frame({"type": "shutdown", "id": "junk"}), "", False),
}  # fmt: skip
"""Frames after which the only thing a worker may write is one error with a nil id
(code ``""``: an orderly end, nothing written)."""


@pytest.mark.parametrize("case", sorted(FATAL_FRAMES))
async def test_a_frame_breaking_an_encoding_rule_is_fatal(peer: list[str], case: str) -> None:
    """§3 rules 1–6 (whatever else the frame holds), and messages with no usable id: one
    ``error`` with a nil id, nothing after it (the ping that follows is never read), exit 3."""
    data, code, before_hello = FATAL_FRAMES[case]
    async with open_worker(peer) as (process, client, stderr):
        with trio.fail_after(TIMEOUT):
            if not before_hello:
                assert isinstance(await client.handshake(), Welcome)
            await send_quietly(client, data + frame({"type": "ping", "id": 99}))
            responses, status = await finish(client, process)
            await stderr.closed.wait()
    if not code:  # a shutdown (an id key on it is an unknown key): an orderly end
        assert (responses, status) == ([], 0)
        return
    assert [(type(m), getattr(m, "id", "?"), getattr(m, "code", "?")) for m in responses] == [(Error, None, code)]
    assert status == 3
    assert code in stderr.text


@dataclass(frozen=True)
class Expect:
    data: bytes
    id: int
    answer: str
    """"pong", "result", or the error code."""
    check: Callable[[WorkerMessage], bool] = lambda _message: True


def _insides(expected: tuple[int, ...] | None) -> Callable[[WorkerMessage], bool]:
    return lambda m: isinstance(m, Result) and m.insides == expected and m.inside == sum(expected or (m.inside,))


def _counts(seed: int, streams: range, points: int = 1000) -> list[int]:
    return [KERNELS["numpy"](seed, s, points) for s in streams]


def _bounded(m: WorkerMessage) -> bool:
    return isinstance(m, Error) and len(m.message) <= 4096 and "\n" not in m.message


BIG = 1 << 40  # points: runs until cancelled
PER_REQUEST: dict[str, Expect] = {
    "id_uint64_encoding": Expect(raw(with_pair({"type": "ping"}, b"\xa2id", b"\xcf" + bytes(7) + b"\x01")), 1, "pong"),
    "id_int8_encoding": Expect(raw(with_pair({"type": "ping"}, b"\xa2id", b"\xd0\x02")), 2, "pong"),
    "nested_maps_need_no_type": Expect(frame({"type": "ping", "id": 3, "x": {"y": {"z": [1, {}]}}}), 3, "pong"),
    "depth_16": Expect(frame({"type": "ping", "id": 4, "x": nested(15)}), 4, "pong"),
    "seed_true": Expect(frame(sample(5, seed=True)), 5, "invalid_request"),
    "seed_float": Expect(frame(sample(6, seed=1.0)), 6, "invalid_request"),
    "no_type": Expect(frame({"id": 7, "seed": 1}), 7, "invalid_request"),
    "type_not_str": Expect(frame({"type": 5, "id": 8, "seed": -1}), 8, "invalid_request"),
    "unknown_type": Expect(frame({"type": "frobnicate", "id": 9}), 9, "unknown_type"),
    "kernel_4096_code_points": Expect(frame(sample(10, kernel="é" * 4096)), 10, "unknown_kernel", _bounded),
    "kernel_4097_code_points": Expect(frame(sample(11, kernel="é" * 4097)), 11, "invalid_request", _bounded),
    "points_over_2_40": Expect(frame(sample(12, points=(1 << 40) + 1)), 12, "invalid_request"),
    "streams_0": Expect(frame(sample(13, streams=0)), 13, "invalid_request"),
    "group_0": Expect(frame(sample(14, streams=2, group=0)), 14, "invalid_request"),
    "range_past_2_64": Expect(frame(sample(15, stream=2**64 - 1, streams=2)), 15, "invalid_request"),
    "range_over_max_points": Expect(frame(sample(16, streams=2, points=1 << 40)), 16, "invalid_request"),
    "groups_4097": Expect(frame(sample(17, streams=4097, group=1, points=0)), 17, "invalid_request"),
    "streams_over_2_20": Expect(frame(sample(24, streams=2**20 + 1, group=2**20, points=0)), 24, "invalid_request"),
    "groups_4096": Expect(frame(sample(18, streams=4096, group=1, points=0)), 18, "result", _insides((0,) * 4096)),
    "streams_1_is_plain": Expect(frame(sample(19, streams=1)), 19, "result", _insides(None)),
    "group_1_is_a_range": Expect(
        frame(sample(20, stream=3, streams=1, group=1)), 20, "result", _insides(tuple(_counts(SEED, range(3, 4))))
    ),
    "group_over_streams": Expect(
        frame(sample(21, stream=5, streams=2, group=7)), 21, "result", _insides((sum(_counts(SEED, range(5, 7))),))
    ),
    "unknown_key": Expect(frame(sample(22, priority={"level": 3})), 22, "result", _insides(None)),
    "first_bad_field_named": Expect(
        frame(sample(23, seed=-1, points=-1)), 23, "invalid_request", lambda m: "seed" in m.message  # type: ignore[union-attr]
    ),
    "streams_nil": Expect(frame(sample(25, streams=None)), 25, "invalid_request"),
    "group_nil": Expect(frame(sample(26, streams=2, group=None)), 26, "invalid_request"),
    "kernel_bin": Expect(frame(sample(27, kernel=b"numpy")), 27, "invalid_request"),
    "running": Expect(frame(sample(30, points=BIG)), 30, "cancelled"),
    "duplicate_before_kernel": Expect(frame(sample(30, kernel="cuda")), 30, "duplicate_id"),
}  # fmt: skip


def kind(message: WorkerMessage) -> str:
    if isinstance(message, Pong):
        return "pong"
    if isinstance(message, Result):
        return "result"
    assert isinstance(message, Error) and message.id is not None, message
    return str(message.code)


async def test_per_request_rules_answer_by_id_and_the_worker_serves_on(peer: list[str]) -> None:
    """One write of requests each wrong (or right) in one precise way: each is answered by
    its id with what protocol.md says, and the worker serves on to an orderly end."""
    async with open_worker([*peer, "--max-inflight", "8"]) as (process, client, _):
        with trio.fail_after(TIMEOUT):
            assert (await client.handshake()).version == 2
            await client.send_bytes(b"".join(e.data for e in PER_REQUEST.values()))
            answers: dict[int, list[WorkerMessage]] = {}
            # Every id gets its answer but the running sample, and 30 is answered twice
            # (the duplicate now, the original once cancelled).
            while sum(map(len, answers.values())) < len(PER_REQUEST) - 1:
                message = await client.receive()
                assert message is not None
                answers.setdefault(message.id, []).append(message)  # type: ignore[union-attr]
            await client.send_bytes(frame({"type": "cancel", "id": 30}) + frame({"type": "shutdown"}))
            rest, status = await finish(client, process)
    for message in rest:
        answers.setdefault(message.id, []).append(message)  # type: ignore[union-attr]
    assert status == 0
    for case, expect in PER_REQUEST.items():
        got = [m for m in answers.get(expect.id, []) if kind(m) == expect.answer]
        assert len(got) == 1 and expect.check(got[0]), f"{case}: expected one {expect.answer}, got {got}"
    assert set(answers) == {e.id for e in PER_REQUEST.values()}
    assert sum(map(len, answers.values())) == len(PER_REQUEST), "a request answered twice"


@pytest.mark.parametrize("cut", [3, 20], ids=["inside_the_header", "inside_the_body"])
async def test_the_worker_writes_nothing_before_its_first_frame_is_whole(peer: list[str], cut: int) -> None:
    """§5: nothing is written until a whole first frame is read (no banner, no eager
    ``welcome``). A first ``hello`` cut short by end of file gets only the fatal
    ``truncated_frame``: the one frame the worker ever writes."""
    async with open_worker(peer) as (process, client, stderr):
        with trio.fail_after(TIMEOUT):
            await send_quietly(client, HELLO_V2[:cut])
            responses, status = await finish(client, process)
            await stderr.closed.wait()
    assert [(type(m), getattr(m, "id", "?"), getattr(m, "code", "?")) for m in responses] == [
        (Error, None, "truncated_frame")
    ]
    assert status == 3


@pytest.mark.parametrize("version", [1, 2])
async def test_the_worker_reads_nothing_after_shutdown(peer: list[str], version: int) -> None:
    """§9: bytes after ``shutdown`` are not read. A coordinator breaking the MUST NOT with
    a request and a stray line in the same write as the ``shutdown`` gets neither read:
    no pong, no fatal error (``hello world`` read as a length is ``frame_too_large``):
    the running sample is answered ``cancelled`` and the worker exits 0."""
    async with open_worker(peer) as (process, client, stderr):
        with trio.fail_after(TIMEOUT):
            assert (await client.handshake(versions=(version,))).version == version
            await send_quietly(
                client,
                frame(sample(1, points=BIG))
                + frame({"type": "shutdown"})
                + frame({"type": "ping", "id": 2})
                + b"hello world\n",
            )
            responses, status = await finish(client, process)
            await stderr.closed.wait()
    assert [(type(m), getattr(m, "id", "?"), getattr(m, "code", "?")) for m in responses] == [
        (Error, 1, "cancelled")
    ]
    assert status == 0
    assert "frame_too_large" not in stderr.text


async def test_precedence_on_a_version_1_connection(peer: list[str]) -> None:
    """Messages wrong in two ways at once get the error of the earlier step of §8's list;
    on version 1, a range is refused but ``streams: 1`` alone is a plain sample."""
    async with open_worker([*peer, "--max-inflight", "1"]) as (process, client, _):
        with trio.fail_after(TIMEOUT):
            await client.send_bytes(
                frame(sample(1, seed=-1))  # field (3) before handshake (5)
                + frame({"type": "frobnicate", "id": 2})  # type (2) before handshake (5)
                + frame({"type": "ping", "id": 3})
                + frame(sample(4, kernel="cuda"))  # handshake (5) before kernel (7)
                + frame({"type": "cancel", "id": 4})  # ignored before hello
            )
            early = [await client.receive() for _ in range(4)]
            assert (await client.handshake(versions=(1,))).version == 1
            await client.send_bytes(
                frame(sample(10, points=BIG))  # fills max_inflight
                + frame(sample(11, kernel="cuda"))  # kernel (7) before busy (8)
                + frame(sample(12, streams=3))  # a version-1 range (7) before busy (8)
                + frame(sample(13, group=1))  # a range too, though of one stream
                + frame(sample(14, streams=1))  # a plain sample: busy (8)
                + frame(sample(10, kernel="cuda", streams=3))  # duplicate (6) before kernel (7)
                + frame({"type": "cancel", "id": 10})
            )
            late = [await client.receive() for _ in range(6)]
            await client.send_bytes(frame(sample(15, streams=1)))
            result = await client.receive()
            await client.send_bytes(frame({"type": "shutdown"}))
            rest, status = await finish(client, process)
    assert [(m.id, kind(m)) for m in early] == [  # type: ignore[union-attr]
        (1, "invalid_request"), (2, "unknown_type"), (3, "handshake_required"), (4, "handshake_required"),
    ]  # fmt: skip
    assert sorted((m.id, kind(m)) for m in late) == [  # type: ignore[union-attr]
        (10, "cancelled"), (10, "duplicate_id"), (11, "unknown_kernel"), (12, "invalid_request"),
        (13, "invalid_request"), (14, "busy"),
    ]  # fmt: skip
    assert rest == []
    assert isinstance(result, Result) and result.insides is None
    assert (result.id, result.inside) == (15, KERNELS["numpy"](SEED, 0, 1000))
    assert status == 0


async def test_frames_from_several_threads_never_interleave(peer: list[str]) -> None:
    """Results written by compute threads and pongs by the reader, at once: every frame
    whole (the probe's strict decoder would fail on a torn one), each id answered once."""
    jobs = ["--jobs", "2"] if peer == PEERS["mcpi-worker"] else []
    n = 40
    points = 70_000  # above the real worker's inline limit: computed off the reader thread
    async with open_worker([*peer, *jobs, "--max-inflight", str(n)]) as (process, client, _):
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            burst = [
                frame(sample(i, stream=i, points=points)) + frame({"type": "ping", "id": 1000 + i}) for i in range(n)
            ]
            await client.send_bytes(b"".join(burst))
            answers = [await client.receive() for _ in range(2 * n)]
            responses, status = await finish(client, process)
    assert responses == [] and status == 0
    assert sorted(m.id for m in answers) == sorted([*range(n), *range(1000, 1000 + n)])  # type: ignore[union-attr]
    for message in answers:
        if isinstance(message, Result):
            assert message.inside == KERNELS["numpy"](SEED, message.id, points)
        else:
            assert isinstance(message, Pong)


def unread(stream: Any) -> int:
    """Bytes in the pipe behind ``stream`` (our end of a worker's stdin) that the worker has
    not read yet: Linux answers FIONREAD on either end of a pipe."""
    return int(struct.unpack("i", fcntl.ioctl(stream.fileno(), termios.FIONREAD, b"\0" * 4))[0])


async def send_in_pieces(process: trio.Process, client: WorkerClient, data: bytes, cuts: list[int]) -> None:
    """Write ``data`` cut at ``cuts``, each piece only once the worker has read the one
    before: so each piece is a read of its own, whatever the scheduler does."""
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        await client.send_bytes(data[start:end])
        while unread(process.stdin) > 0:
            await trio.sleep(0.001)  # polls the event itself; bounded by the caller


async def test_frames_split_across_reads_and_several_in_one_read_are_read_whole(peer: list[str]) -> None:
    """§2: a frame may arrive cut at any byte (inside its header too) and one read may end
    one frame and start the next; every answer is the one for the whole frames."""
    hello = HELLO_V2
    ping, probe, last = frame({"type": "ping", "id": 1}), frame(sample(2)), frame({"type": "ping", "id": 3})
    data = hello + ping + probe + last
    cuts = [1, 3, 4, 9, len(hello) + 2, len(hello) + len(ping) + 3, len(hello) + len(ping) + 20, len(data) - 1]
    async with open_worker(peer) as (process, client, _):
        with trio.fail_after(TIMEOUT):
            await send_in_pieces(process, client, data, cuts)
            welcome = await client.receive()
            answers = {m.id: m for m in [await client.receive() for _ in range(3)]}  # type: ignore[union-attr]
            responses, status = await finish(client, process)
    assert isinstance(welcome, Welcome) and welcome.version == 2
    assert answers[1] == Pong(1) and answers[3] == Pong(3)
    assert isinstance(answers[2], Result) and answers[2].inside == KERNELS["numpy"](SEED, 0, 1000)
    assert (responses, status) == ([], 0)


@pytest.mark.parametrize(
    ("versions", "chosen"),
    [([7, 2, 2, 1, 2**64 - 1], 2), ([1, 7, 2], 2), ([1, 1], 1), ([2, 1], 2), ([3, 1], 1)],
    ids=["unsorted_repeated_unknown", "ascending_with_unknown", "repeated", "descending", "unknown_and_1"],
)
async def test_the_worker_chooses_the_highest_common_version_whatever_the_list(
    peer: list[str], versions: list[int], chosen: int
) -> None:
    """§5: any order, repeats, versions the worker does not know: the highest common one."""
    async with open_worker(peer) as (process, client, _):
        with trio.fail_after(TIMEOUT):
            await client.send_bytes(frame({"type": "hello", "versions": versions, "client": ""}))
            welcome = await client.receive()
            responses, status = await finish(client, process)
    assert isinstance(welcome, Welcome) and welcome.version == chosen
    assert (responses, status) == ([], 0)


async def test_pings_and_samples_share_one_id_space_and_a_cancel_reaches_only_what_was_read(
    peer: list[str],
) -> None:
    """§6: a ping with an outstanding sample's id is ``duplicate_id`` (the sample unharmed);
    an id reused once answered is served. §7: a cancel for an id not yet read does nothing,
    not even to the request with that id that follows it."""
    async with open_worker(peer) as (process, client, _):
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            await client.send_bytes(frame({"type": "cancel", "id": 5}) + frame(sample(5)))
            early = await client.receive()
            await client.send_bytes(frame(sample(6, points=BIG)) + frame({"type": "ping", "id": 6}))
            duplicate = await client.receive()
            await client.send_bytes(frame({"type": "cancel", "id": 6}))
            cancelled = await client.receive()
            await client.send_bytes(frame({"type": "ping", "id": 6}) + frame(sample(5, stream=1)))
            reused = {m.id: m for m in [await client.receive() for _ in range(2)]}  # type: ignore[union-attr]
            await client.send_bytes(frame({"type": "shutdown"}))
            responses, status = await finish(client, process)
    assert isinstance(early, Result) and (early.id, early.inside) == (5, KERNELS["numpy"](SEED, 0, 1000))
    assert isinstance(duplicate, Error) and (duplicate.id, duplicate.code) == (6, "duplicate_id")
    assert isinstance(cancelled, Error) and (cancelled.id, cancelled.code) == (6, "cancelled")
    assert reused[6] == Pong(6)
    assert isinstance(reused[5], Result) and reused[5].inside == KERNELS["numpy"](SEED, 1, 1000)
    assert (responses, status) == ([], 0)


async def test_a_kernel_s_multi_line_exception_is_answered_in_one_bounded_line() -> None:
    """§8: the worker's ``internal`` error for a kernel whose exception runs over several
    lines, and past 4096 characters, is one line within the limit; our coordinator's
    checks take it as the per-request error it is, and the worker serves on."""

    def failing(seed: int, stream: int, points: int, should_stop: object) -> int:
        raise ValueError("first line\nsecond line\r\nthird\r" + "é" * 5000)

    def make(input_fd: int, output_fd: int) -> Worker:
        return Worker(input_fd, output_fd, kernels={"failing": failing, "numpy": KERNELS["numpy"]})

    with trio.fail_after(TIMEOUT):
        async with serving_over_pipes(make) as client:
            await client.handshake()
            await client.send_bytes(frame(sample(1, kernel="failing")) + frame(sample(2)))
            answers = {m.id: m for m in [await client.receive() for _ in range(2)]}  # type: ignore[union-attr]
    failed = answers[1]
    assert isinstance(failed, Error) and failed.code == "internal"
    assert failed.message.startswith("ValueError: first line / second line / third / éé")
    assert len(failed.message) == 4096 and failed.message.endswith("…")
    assert Error(1, ErrorCode.INTERNAL, failed.message) == parse_message(
        msgpack.unpackb(encode(failed)[4:]), WORKER_MESSAGES
    )  # what a coordinator checking §4 reads: a valid error
    assert isinstance(answers[2], Result) and answers[2].inside == KERNELS["numpy"](SEED, 0, 1000)


# ------------------------------------------------------------------ the spec worker itself


def golden_frames() -> dict[str, bytes]:
    found = re.findall(r"```golden:(\w+)\n#[^\n]*\n(.*?)```", protocol_text(), flags=re.S)
    return {name: bytes.fromhex(hexdump) for name, hexdump in found}


async def test_the_spec_worker_accepts_the_golden_frames() -> None:
    golden = golden_frames()
    async with open_worker([sys.executable, SPEC_WORKER]) as (process, client, _):
        with trio.fail_after(TIMEOUT):
            await client.send_bytes(golden["hello_v2"])
            welcome = await client.receive()
            assert isinstance(welcome, Welcome) and welcome.version == 2
            await client.send_bytes(golden["sample"] + golden["range_sample"] + golden["ping"])
            answers = {m.id: m for m in [await client.receive() for _ in range(3)]}  # type: ignore[union-attr]
            await client.send_bytes(golden["cancel"] + golden["shutdown"])  # id 1 is answered: no effect
            rest, status = await finish(client, process)
    assert answers[7] == Pong(7)
    assert (answers[1].inside, answers[1].points) == (785_194, 1_000_000)  # type: ignore[union-attr]
    assert answers[3].insides == (1_571_032, 1_571_358)  # type: ignore[union-attr]
    assert (rest, status) == ([], 0)
    async with open_worker([sys.executable, SPEC_WORKER]) as (process, client, _):
        with trio.fail_after(TIMEOUT):
            await send_quietly(client, b"hello world\n")
            responses, status = await finish(client, process)
    fatal = msgpack.unpackb(golden["fatal_error"][4:])
    assert [(m.id, m.code) for m in responses] == [(fatal["id"], fatal["code"])]  # type: ignore[union-attr]
    assert status == 3


async def test_the_spec_worker_reproduces_the_golden_kernel_table() -> None:
    block = re.search(r"```golden-kernels\n(.*?)```", protocol_text(), flags=re.S)
    assert block is not None
    rows = [line.split() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    async with open_worker([sys.executable, SPEC_WORKER, "--max-inflight", str(len(rows))]) as (process, client, _):
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            await client.send_bytes(
                b"".join(
                    frame({"type": "sample", "id": i, "seed": int(seed), "stream": int(stream), "points": int(points),
                           "kernel": kernel})
                    for i, (kernel, seed, stream, points, _) in enumerate(rows)
                )
            )  # fmt: skip
            results = {m.id: m for m in [await client.receive() for _ in rows]}  # type: ignore[union-attr]
            await finish(client, process)
    for i, (kernel, seed, stream, points, inside) in enumerate(rows):
        assert results[i].inside == int(inside), (kernel, seed, stream, points)  # type: ignore[union-attr]


# ------------------------------------------------------------------ our coordinator, the spec worker


def per_stream(results: list[ChunkResult]) -> dict[tuple[str, int], int]:
    counts = {}
    for result in results:
        for offset, inside in enumerate(result.stream_counts):
            key = (result.chunk.kernel, result.chunk.stream + offset)
            assert key not in counts, f"{key} counted twice"
            counts[key] = inside
    return counts


RUN = [
    Chunk(SEED, 0, 20_000, streams=60),
    Chunk(SEED, 60, 20_000),
    Chunk(SEED, 61, 3_000, kernel="python", streams=3),
]


async def _run(command: list[str], chunks: list[Chunk]) -> tuple[list[ChunkResult], int]:
    async with WorkerPool(2, command, startup_timeout=PATIENT_START_S) as pool:
        async with pool.imap_unordered(chunks) as results:
            collected = [result async for result in results]
        return collected, pool.stats.restarts


async def test_the_pool_gets_the_real_worker_s_counts_from_the_spec_worker_on_versions_1_and_2() -> None:
    outcomes: dict[str, tuple[list[ChunkResult], int]] = {}

    async def run(name: str, command: list[str]) -> None:
        outcomes[name] = await _run(command, RUN)

    with trio.fail_after(TIMEOUT * 2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "real", worker_command())
            nursery.start_soon(run, "spec", [sys.executable, SPEC_WORKER])
            nursery.start_soon(run, "spec-v1", [sys.executable, SPEC_WORKER, "--versions", "1"])
    real = per_stream(outcomes["real"][0])
    assert len(real) == 64
    for name in ("spec", "spec-v1"):
        results, restarts = outcomes[name]
        assert per_stream(results) == real, name
        assert restarts == 0, name
    assert all(r.chunk.streams == 1 for r in outcomes["spec-v1"][0]), "a version-1 worker was sent a range"
    assert any(r.chunk.streams > 1 for r in outcomes["spec"][0]), "the version-2 spec worker got no range"


@pytest.mark.slow
def test_mcpi_estimate_with_the_spec_worker_gives_the_real_worker_s_count() -> None:
    """Through the CLI, on the same seed, points and chunk size: bit for bit."""
    base = [sys.executable, "-m", "mcpi_coordinator", "estimate", "--points", "3e6", "--chunk-size", "2.5e5",
            "--seed", str(SEED), "--workers", "2", "--json", "--no-progress"]  # fmt: skip
    worker_cmds = {
        "real": shlex.join(worker_command()),
        "spec": shlex.join([sys.executable, SPEC_WORKER]),
        "spec-v1": shlex.join([sys.executable, SPEC_WORKER, "--versions", "1"]),
    }
    runs = {
        name: subprocess.Popen([*base, "--worker-cmd", cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, cmd in worker_cmds.items()
    }
    outputs = {name: run.communicate(timeout=TIMEOUT * 2) for name, run in runs.items()}
    for name, run in runs.items():
        assert run.returncode == 0, (name, outputs[name][1])
    inside = {name: json.loads(out)["inside"] for name, (out, _) in outputs.items()}
    assert inside["spec"] == inside["real"] == inside["spec-v1"]
    assert inside["real"] == sum(KERNELS["numpy"](SEED, s, 250_000) for s in range(12))


async def test_a_cancelled_range_is_waited_for_and_the_spec_worker_serves_on() -> None:
    """Leaving ``imap_unordered`` cancels a huge range; its ``cancelled`` answer comes later
    and must find its id still known, or the worker would be replaced for it."""
    with trio.fail_after(TIMEOUT):
        spec_worker = [sys.executable, SPEC_WORKER]
        async with WorkerPool(1, spec_worker, pipeline_depth=2, startup_timeout=PATIENT_START_S) as pool:
            chunks = [Chunk(SEED, 0, 1000), Chunk(SEED, 1, 1 << 30, streams=1000)]
            async with pool.imap_unordered(chunks) as results:
                async for first in results:
                    assert first.chunk.stream == 0
                    break
            # jobs = 1: the next sample runs only once the range has stopped and been answered
            after = await pool.sample(Chunk(SEED, 2, 1000))
            assert after.inside == KERNELS["numpy"](SEED, 2, 1000)
            assert pool.stats.restarts == 0 and pool.stats.in_flight == 0


# ------------------------------------------------------------------ hostile workers


@dataclass(frozen=True)
class Case:
    reason: str
    """A pattern of what the pool's log must say of the worker it replaced: the rule it
    caught (or its exit, where the worker exits as it breaks the rule)."""
    chunks: tuple[Chunk, ...] = (Chunk(SEED, 0, 2000), Chunk(SEED, 1, 2000), Chunk(SEED, 2, 2000))


RANGE = (Chunk(SEED, 0, 2000, streams=16), Chunk(SEED, 16, 2000))  # pieces of 1, 2, 4... streams
BROKEN: dict[str, Case] = {
    "zero_length": Case("malformed_frame"),
    "oversize_header": Case("frame_too_large"),
    "trailing_bytes": Case("malformed_frame"),
    "body_ends_early": Case("malformed_frame"),
    "eof_mid_frame": Case("truncated_frame|exited|while writing to the worker"),  # whichever end notices first
    "not_a_map": Case("malformed_frame"),
    "bin_key": Case("malformed_frame"),
    "int_key": Case("malformed_frame"),
    "bad_utf8": Case("malformed_frame"),
    "ext_type": Case("malformed_frame"),
    "timestamp": Case("malformed_frame"),
    "too_deep": Case("malformed_frame"),
    "duplicate_key": Case("malformed_frame"),
    "no_type": Case("invalid_request"),
    "unknown_type": Case("unknown_type"),
    "unknown_type_no_id": Case("unknown_type"),
    "bool_inside": Case("'inside'"),
    "negative_elapsed": Case("'elapsed_s'"),
    "infinite_elapsed": Case("'elapsed_s'"),
    "long_message": Case("'message'"),
    "long_kernels": Case("'kernels'"),
    "max_points_over_2_40": Case("'max_points'"),
    "unknown_code": Case("with a code protocol version [12] does not have: quantum_flux: new"),
    "unknown_code_nil_id": Case("quantum_flux"),
    "refuse_offered_kernel": Case("which its welcome admits: unknown_kernel: new"),
    "refuse_valid": Case("which its welcome admits: invalid_request: new"),
    "refuse_fresh_id": Case("which its welcome admits: duplicate_id: new"),
    "refuse_after_welcome": Case("which its welcome admits: handshake_required: new"),
    "fatal_code_with_id": Case("malformed_frame"),
    "second_welcome": Case("second welcome"),
    "before_welcome": Case("before its welcome"),
    "version_not_offered": Case("version 3"),
    "welcome_without_version": Case("'version'"),
    "only_version_3": Case("unsupported_version"),
    "jobs_over_max_inflight": Case("more than its max_inflight"),
    "jobs_1025": Case("more than the limit of 1024"),
    "implementations_short": Case("1 implementations for 2 kernels"),
    "unknown_id": Case("not in flight"),
    "answered_twice": Case("not in flight"),
    "pong_for_sample": Case("with a pong"),
    "points_differ": Case("points for request"),
    "inside_exceeds": Case("inside out of"),
    "eof_outstanding": Case("closed its stdout|exited|while writing to the worker"),
    "eof_before_welcome": Case("before its welcome|exited"),
    "insides_missing": Case(r"counts for the \d+ groups", RANGE),
    "insides_on_plain": Case("counts per group for the plain sample"),
    "insides_wrong_length": Case(r"counts for the \d+ groups", RANGE),
    "group_over_points": Case("more inside than a group has points", RANGE),
    "insides_bad_sum": Case("do not add up", RANGE),
    "implementation_nil": Case("'implementation'"),
    "multiline_message": Case("'message' must be one line"),
}
KNOWN_BUGS: dict[str, str] = {}
"""Rules our coordinator breaks today: their cases are strict xfails, to pass once fixed."""


def _case_params(cases: dict[str, Any]) -> list[Any]:
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name]))
        if name in KNOWN_BUGS
        else name
        for name in sorted(cases)
    ]


def _on_both_versions(cases: dict[str, Any], *, v2_only: frozenset[str] = frozenset()) -> list[Any]:
    """``_case_params`` of ``cases``, each on a version-2 connection (id: the case) and, but
    for ``v2_only``, on a version-1 one (id: ``case-v1``): the raw worker then welcomes
    with version 1, as a worker written before version 2 would."""
    params = []
    for param in _case_params(cases):
        name = param if isinstance(param, str) else param.values[0]
        marks = () if isinstance(param, str) else param.marks
        params.append(pytest.param(name, 2, marks=marks, id=name))
        if name not in v2_only:
            params.append(pytest.param(name, 1, marks=marks, id=f"{name}-v1"))
    return params


@asynccontextmanager
async def hostile_then_honest(
    fault: str, version: int | None = None, *, environ: dict[str, str] | None = None, **options: Any
) -> AsyncIterator[tuple[WorkerPool, list[WorkerProcess]]]:
    """A one-slot pool whose first worker is ``raw_worker.py fault`` (welcoming with
    ``version``, or the highest our hello offers; ``environ`` added to its environment)
    and whose replacements are honest in-process fakes. Yields the pool and the
    processes launched."""
    launched: list[WorkerProcess] = []
    settings = [f"{name}={value}" for name, value in (environ or {}).items()]
    command = [
        *(["env", *settings] if settings else []),
        sys.executable, RAW_WORKER, fault, *([str(version)] if version is not None else []),
    ]  # fmt: skip
    async with trio.open_nursery() as nursery:
        honest = fake_launcher(nursery, FakeBehaviour())

        async def launch(index: int) -> WorkerProcess:
            process = await (spawn_worker(command) if not launched else honest(index))
            launched.append(process)
            return process

        # A task timeout longer than the test's own bound: a rule caught late, by the
        # clock rather than by the check, fails the test.
        options = {"task_timeout": TIMEOUT * 2, "backoff_s": 0.0, **options}
        async with WorkerPool(1, launcher=launch, **options) as pool:
            yield pool, launched


async def count(pool: WorkerPool, chunks: tuple[Chunk, ...]) -> dict[tuple[str, int], int]:
    async with pool.imap_unordered(chunks) as results:
        return per_stream([result async for result in results])


def truth(chunks: tuple[Chunk, ...]) -> dict[tuple[str, int], int]:
    return {
        (c.kernel, s): KERNELS[c.kernel](c.seed, s, c.points)
        for c in chunks
        for s in range(c.stream, c.stream + c.streams)
    }


RANGE_CASES = frozenset(name for name, case in BROKEN.items() if case.chunks == RANGE)
"""Faults in a range's counts per group: a version-1 connection is sent no range."""


@pytest.mark.parametrize(("fault", "version"), _on_both_versions(BROKEN, v2_only=RANGE_CASES))
async def test_a_worker_breaking_a_rule_is_replaced_and_its_answer_never_counted(fault: str, version: int) -> None:
    """The worker is given up on at once (not at a timeout), named in one log line with the
    rule it broke, stopped and reaped; its requests go to its replacement, and the run's
    counts are the true ones (every bad answer carries a wrong count). On either version
    (the ranges' counts per group only on version 2, where ranges are sent)."""
    case = BROKEN[fault]
    with capture_logs() as logs, trio.fail_after(TIMEOUT):
        async with hostile_then_honest(fault, version) as (pool, launched):
            assert await count(pool, case.chunks) == truth(case.chunks)
            assert pool.stats.restarts == 1
    [failed] = [entry for entry in logs if entry["event"] == "worker_failed"]
    assert re.search(case.reason, failed["reason"]) and "\n" not in failed["reason"], failed["reason"]
    assert all(process.returncode is not None for process in launched)  # all reaped


@pytest.mark.parametrize("fault", ["unknown_code", "refuse_offered_kernel"])
async def test_a_chunk_every_worker_refuses_ends_with_one_line_naming_the_code(fault: str) -> None:
    """Every worker refuses its first sample for good (a bug of our own would make every
    worker refuse): each is replaced, and the request ends, once, with one line naming
    the code, when its attempts or the slots' restarts run out; it is never sent for
    ever. Every worker launched is reaped."""
    launched: list[WorkerProcess] = []

    async def launch(index: int) -> WorkerProcess:
        launched.append(await spawn_worker([sys.executable, RAW_WORKER, fault]))
        return launched[-1]

    code = "quantum_flux" if fault == "unknown_code" else "unknown_kernel"
    with trio.fail_after(TIMEOUT):
        async with WorkerPool(2, launcher=launch, task_timeout=TIMEOUT * 2, backoff_s=0.0) as pool:
            with pytest.raises((ChunkFailed, PoolExhausted)) as ended:
                await pool.sample(Chunk(SEED, 0, 2000))
    message = str(ended.value)
    assert f"{code}: new" in message and "\n" not in message, message
    assert 2 <= len(launched) <= 6  # each worker refused once; the budget ended it
    assert all(process.returncode is not None for process in launched)


@pytest.mark.slow
async def test_a_worker_given_up_on_gets_sigterm_before_sigkill(tmp_path: Path) -> None:
    """§9, a real process: a worker silent on its sample (``deaf``: it ignores SIGTERM,
    SIGINT and SIGHUP, noting each it gets) is given up on at the task timeout, sent
    SIGTERM first (a launcher such as ``ssh`` or ``srun`` ends its remote side on it), and
    SIGKILL once the grace is over; it is reaped, and its chunk counted elsewhere. (The
    grace is long enough for a loaded machine to run the worker's handler of SIGTERM.)"""
    noted = tmp_path / "signals"
    chunk = Chunk(SEED, 0, 2000)
    with trio.fail_after(TIMEOUT):
        async with hostile_then_honest(
            "deaf", environ={"RAW_WORKER_SIGNALS": str(noted)}, task_timeout=1.0, shutdown_grace=5.0
        ) as (pool, launched):
            assert (await pool.sample(chunk)).inside == KERNELS["numpy"](SEED, 0, 2000)
            assert pool.stats.restarts == 1
    deaf = launched[0]
    assert deaf.returncode == -9  # SIGKILL ended it: it ignored the SIGTERM
    assert noted.read_text(encoding="ascii").split() == ["SIGTERM"]  # first, and it was noted


async def test_a_ping_answered_with_a_result_breaks_the_worker() -> None:
    with capture_logs() as logs, trio.fail_after(TIMEOUT):
        async with hostile_then_honest("result_for_ping") as (pool, launched):
            assert await pool.ping() == 0  # sent again to the replacement
            assert pool.stats.restarts == 1
    [failed] = [entry for entry in logs if entry["event"] == "worker_failed"]
    assert "ping request id 1 with a result" in failed["reason"]
    assert launched[0].returncode is not None


async def _max_points(pool: WorkerPool) -> None:
    with pytest.raises(RequestFailed, match="at most 1000 points"):
        await pool.sample(Chunk(SEED, 0, 2000))
    assert (await pool.sample(Chunk(SEED, 1, 1000))).inside == KERNELS["numpy"](SEED, 1, 1000)


async def _max_frame(pool: WorkerPool) -> None:
    # No sample fits in 40 bytes; a ping (15) does.
    with pytest.raises(RequestFailed):
        await pool.sample(Chunk(SEED, 0, 2000))
    assert await pool.ping() == 0


async def _no_room(pool: WorkerPool) -> None:
    # Not even a ping (15 bytes) fits in 14, nor the shutdown the pool ends it with.
    with pytest.raises(RequestFailed):
        await pool.sample(Chunk(SEED, 0, 2000))
    with pytest.raises(RequestFailed):
        await pool.ping()


async def _several(pool: WorkerPool) -> None:
    chunks = tuple(Chunk(SEED, s, 2000) for s in range(8))
    assert await count(pool, chunks) == truth(chunks)


async def _several_and_a_ping(pool: WorkerPool) -> None:
    await _several(pool)
    assert await pool.ping() == 0
    chunks = (Chunk(SEED, 8, 2000, streams=5),)  # a range: its insides too
    assert await count(pool, chunks) == truth(chunks)


KEPT: dict[str, tuple[Callable[[WorkerPool], Any], dict[str, Any]]] = {
    "max_points_1000": (_max_points, {}),
    "max_frame_40": (_max_frame, {}),
    "max_frame_14": (_no_room, {}),
    "max_inflight_1": (_several, {"pipeline_depth": 4}),
    "stderr_not_json": (_several, {}),
    "stderr_flood_on_shutdown": (_several, {"shutdown_grace": TIMEOUT / 2}),
    "negative_zero_elapsed": (_several, {}),
    "split_frames": (_several, {}),
    "unknown_keys": (_several_and_a_ping, {}),
    "version_1_only": (_several_and_a_ping, {}),
    "wide_encodings": (_several_and_a_ping, {}),
}
"""Workers that keep the rules while our coordinator must keep its own: the limits their
welcome sets, an ``elapsed_s`` of −0.0 taken as the 0 it equals, unknown keys ignored
and every msgpack encoding of a value taken (not only the shortest), stderr read whatever
it holds and for as long as the worker runs. Every one of them also watches that the
coordinator sends only the messages of §4.1, never a request id twice, and nothing after
``shutdown``. The worker exits 9 if the coordinator broke a rule it watches, and is never
replaced. (An unknown error code, ``unknown_code``, is no longer among them: it breaks the
worker, ``BROKEN``, protocol.md §8 *Refusals for good*.)"""


@pytest.mark.parametrize(("fault", "version"), _on_both_versions(KEPT, v2_only=frozenset({"version_1_only"})))
async def test_the_coordinator_keeps_the_limits_a_welcome_sets(fault: str, version: int) -> None:
    drive, options = KEPT[fault]
    with capture_logs() as logs, trio.fail_after(TIMEOUT):
        async with hostile_then_honest(fault, version, **options) as (pool, launched):
            await drive(pool)
            assert pool.stats.restarts == 0
    [worker] = launched
    assert worker.returncode == 0, f"exit {worker.returncode}: the coordinator broke a rule the worker watches"
    if fault == "stderr_not_json":
        relayed = [entry["line"] for entry in logs if entry["event"] == "worker_stderr"]
        assert "plain text, not JSON" in relayed and '{"event": "half a JSON object' in relayed, relayed


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault", ["oversize_header", "second_welcome", "only_version_3", "unknown_code", "refuse_offered_kernel"]
)
def test_mcpi_estimate_ends_with_one_line_when_every_worker_breaks_a_rule(fault: str) -> None:
    command = shlex.join([sys.executable, RAW_WORKER, fault])
    completed = subprocess.run(
        [sys.executable, "-m", "mcpi_coordinator", "estimate", "--points", "6000", "--chunk-size", "2000",
         "--workers", "1", "--worker-cmd", command, "--no-progress"],
        capture_output=True, text=True, timeout=TIMEOUT * 2, check=False,
    )  # fmt: skip
    assert completed.returncode == 1, completed.stderr
    assert completed.stdout == ""
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcpi estimate: error:"), completed.stderr
    assert "Traceback" not in completed.stderr
