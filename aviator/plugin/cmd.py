"""`kubectl aviator`: status, explain POLICY, latency SERVICE, compare SERVICE, restore
SERVICE.

kubectl runs plugins as `kubectl-aviator ARGS...` and passes no flags of its own, so
the usual ones are handled here: --kubeconfig, --context, -n/--namespace (default:
the context's namespace, else `default`), -A/--all-namespaces for status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import yaml

from aviator import __version__
from aviator.api.crd import CRD_NAME
from aviator.kube import ApiError, KubeClient
from aviator.kube.objects import JSON
from aviator.kube.resources import AVIATORPOLICIES, PODS, SERVICES
from aviator.plugin import compare as canary
from aviator.plugin import report
from aviator.plugin.restore import plan_restore


def _connection_flags(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--kubeconfig",
        default=default,
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)",
    )
    parser.add_argument("--context", default=default, help="kubeconfig context")
    parser.add_argument(
        "-n", "--namespace", default=default, help="namespace (default: the context's)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl aviator", description="Inspect and operate Aviator's policies."
    )
    parser.add_argument("--version", action="version", version=f"kubectl-aviator {__version__}")
    _connection_flags(parser, None)
    # The same flags after the command (`kubectl aviator explain P -n shop`); SUPPRESS
    # keeps a subcommand from resetting what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    _connection_flags(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    status = sub.add_parser(
        "status", parents=[common], help="every policy: routing, pods, p99, conditions"
    )
    status.add_argument("-A", "--all-namespaces", action="store_true")
    explain = sub.add_parser(
        "explain", parents=[common], help="every pod of a policy: in or out, and why"
    )
    explain.add_argument("policy")
    latency = sub.add_parser(
        "latency", parents=[common], help="per-pod latency of a Service's pods"
    )
    latency.add_argument("service")
    compare = sub.add_parser(
        "compare",
        parents=[common],
        help="is the canary's p99 (and error rate) within a margin of the stable pods'",
        description="Exit code: 0 pass, 1 fail, 2 no verdict (not enough data, or the "
        "data could not be read). See docs/canary.md.",
    )
    compare.add_argument("service")
    compare.add_argument(
        "-l", "--selector", required=True, help="label selector of the canary's pods"
    )
    compare.add_argument(
        "--within",
        type=float,
        default=canary.DEFAULT_WITHIN_PERCENT,
        metavar="PERCENT",
        help="how much slower than the stable pods' p99 the canary's may be (default %(default)g)",
    )
    compare.add_argument(
        "--max-error-increase",
        type=float,
        default=canary.DEFAULT_MAX_ERROR_INCREASE,
        metavar="POINTS",
        help="percentage points the canary's error rate may exceed the stable pods' "
        "(default %(default)g)",
    )
    compare.add_argument(
        "--min-samples",
        type=int,
        default=canary.DEFAULT_MIN_SAMPLES,
        help="requests each side needs in the window for a verdict (default %(default)d)",
    )
    compare.add_argument(
        "--policy",
        help="the AviatorPolicy to read (default: the oldest that targets or routes the Service)",
    )
    compare.add_argument("-o", "--output", choices=["text", "json"], default="text")
    restore = sub.add_parser(
        "restore", parents=[common], help="give a taken-over Service its selector back"
    )
    restore.add_argument("service")
    restore.add_argument(
        "--force", action="store_true", help="even while the policy that took it over exists"
    )
    restore.add_argument("--dry-run", action="store_true", help="print the patch, change nothing")
    return parser


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the kubeconfig's (current) context, as kubectl picks it."""
    import os

    paths = [kubeconfig] if kubeconfig else (os.environ.get("KUBECONFIG") or "").split(os.pathsep)
    paths = [p for p in paths if p] or [str(Path.home() / ".kube" / "config")]
    for path in paths:
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        name = context or config.get("current-context")
        for ctx in config.get("contexts") or []:
            if ctx.get("name") == name:
                return str((ctx.get("context") or {}).get("namespace") or "default")
    return "default"


async def _policies(client: KubeClient, namespace: str | None) -> list[JSON]:
    try:
        items: list[JSON] = (await client.list(AVIATORPOLICIES, namespace))["items"]
    except ApiError as exc:
        if exc.not_found:
            raise SystemExit(f"the AviatorPolicy API is not installed ({CRD_NAME})") from exc
        raise
    return items


async def _run(args: argparse.Namespace, out: list[str]) -> int:
    namespace = args.namespace or _context_namespace(args.kubeconfig, args.context)
    async with await KubeClient.load(args.kubeconfig, args.context) as client:
        if args.command == "status":
            policies = await _policies(client, None if args.all_namespaces else namespace)
            if not policies:
                out.append("No AviatorPolicies found.")
                return 0
            out.append(report.table(report.STATUS_HEADERS, report.status_rows(policies)))
            notes = [t for t in (report.conditions_text(p) for p in policies) if t]
            if notes:
                out.extend(["", *notes])
            return 0
        if args.command == "explain":
            try:
                policy = await client.get(AVIATORPOLICIES, args.policy, namespace)
            except ApiError as exc:
                if exc.not_found:
                    out.append(f"AviatorPolicy {namespace}/{args.policy} not found")
                    return 1
                raise
            pods = (await client.list(PODS, namespace))["items"]
            out.append(report.explain_header(policy))
            out.append("")
            out.append(report.table(report.EXPLAIN_HEADERS, report.explain_rows(policy, pods)))
            zones = report.zone_rows(policy)
            if zones:
                out.extend(["", report.table(report.ZONE_HEADERS, zones)])
            return 0
        if args.command == "latency":
            found = report.policies_for_service(await _policies(client, namespace), args.service)
            if not found:
                out.append(f"no AviatorPolicy targets or routes Service {namespace}/{args.service}")
                return 1
            for policy in found:
                meta = policy["metadata"]
                out.append(f"AviatorPolicy {meta['namespace']}/{meta['name']}:")
                out.append(report.table(report.LATENCY_HEADERS, report.latency_rows(policy)))
            return 0
        if args.command == "compare":
            return await _compare(client, args, namespace, out)
        # restore
        try:
            service = await client.get(SERVICES, args.service, namespace)
        except ApiError as exc:
            if exc.not_found:
                out.append(f"Service {namespace}/{args.service} not found")
                return 1
            raise
        plan = plan_restore(service, await _policies(client, namespace), force=args.force)
        if plan.refused:
            out.append(plan.message)
            return 1
        if plan.patch is not None:
            if args.dry_run:
                out.append(yaml.safe_dump(plan.patch, sort_keys=True).rstrip())
                out.append(f"(dry run) {plan.message}")
                return 0
            try:
                await client.patch(SERVICES, args.service, plan.patch, namespace)
            except ApiError as exc:
                if exc.conflict:
                    out.append(f"Service {namespace}/{args.service} changed meanwhile; run again")
                    return 1
                raise
        out.append(plan.message)
        return 0


async def _compare(
    client: KubeClient, args: argparse.Namespace, namespace: str, out: list[str]
) -> int:
    """`compare`: reads the policy and the canary's pod names; `canary.compare` decides."""
    if args.within < 0 or args.max_error_increase < 0 or args.min_samples < 1:
        out.append("--within and --max-error-increase must be >= 0, --min-samples >= 1")
        return canary.Outcome.NO_DATA.exit_code
    found = report.policies_for_service(await _policies(client, namespace), args.service)
    if args.policy:
        found = [p for p in found if p["metadata"]["name"] == args.policy]
    if not found:
        which = f"AviatorPolicy {args.policy}" if args.policy else "AviatorPolicy"
        reason = f"no {which} targets or routes Service {namespace}/{args.service}"
        if args.output == "json":
            code = canary.Outcome.NO_DATA.exit_code
            body = {"verdict": str(canary.Outcome.NO_DATA), "exitCode": code, "reasons": [reason]}
            out.append(json.dumps(body, indent=2))
        else:
            out.append(f"NO DATA: {reason}")
        return canary.Outcome.NO_DATA.exit_code
    policy = found[0]
    pods = await client.list(PODS, namespace, params={"labelSelector": args.selector})
    names = {str(p["metadata"]["name"]) for p in pods["items"]}
    status = report.status_of(policy)
    rows = canary.split_rows(status.pods, names)
    verdict = canary.compare(
        *rows,
        within_percent=args.within,
        max_error_increase=args.max_error_increase,
        min_samples=args.min_samples,
    )
    meta = policy["metadata"]
    if args.output == "json":
        body = {
            "service": args.service,
            "namespace": namespace,
            "policy": meta["name"],
            "selector": args.selector,
            "asOf": status.last_evaluation_time,
            **verdict.to_json(),
        }
        out.append(json.dumps(body, indent=2))
        return verdict.outcome.exit_code
    when = report.age(status.last_evaluation_time, datetime.now(UTC))
    out.append(
        f"AviatorPolicy {meta['namespace']}/{meta['name']} (evaluated {when} ago), "
        f"canary: {args.selector}"
    )
    out.append(report.table(canary.GROUP_HEADERS, canary.group_rows(verdict)))
    out.extend(f"note: {n}" for n in verdict.notes)
    out.append(verdict.line())
    return verdict.outcome.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: list[str] = []
    try:
        code = asyncio.run(_run(args, out))
    except ApiError as exc:
        out.append(f"error: {exc}")
        # compare's exit 1 means "the canary failed": an error is "no verdict"
        code = canary.Outcome.NO_DATA.exit_code if args.command == "compare" else 1
    # compare's verdict (pass or not) is its output: always on stdout
    stream = sys.stdout if code == 0 or args.command == "compare" else sys.stderr
    for line in out:
        print(line, file=stream)
    return code


if __name__ == "__main__":
    sys.exit(main())
