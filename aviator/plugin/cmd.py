"""`kubectl aviator`: status, explain POLICY, latency SERVICE, restore SERVICE.

kubectl runs plugins as `kubectl-aviator ARGS...` and passes no flags of its own, so
the usual ones are handled here: --kubeconfig, --context, -n/--namespace (default:
the context's namespace, else `default`), -A/--all-namespaces for status.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from aviator import __version__
from aviator.api.crd import CRD_NAME
from aviator.kube import ApiError, KubeClient
from aviator.kube.objects import JSON
from aviator.kube.resources import AVIATORPOLICIES, PODS, SERVICES
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: list[str] = []
    try:
        code = asyncio.run(_run(args, out))
    except ApiError as exc:
        out.append(f"error: {exc}")
        code = 1
    stream = sys.stdout if code == 0 else sys.stderr
    for line in out:
        print(line, file=stream)
    return code


if __name__ == "__main__":
    sys.exit(main())
