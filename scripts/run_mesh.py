"""`make run`: every implemented service on embedded defaults, in one terminal.

Starts each service as its own process (`python -m services.<name>`), prints
where each listens and a first call to try, and on Ctrl-C (or SIGTERM) stops
them all gracefully. If one dies, the rest are stopped and the exit is non-zero.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# In start order: a process starts after the ones it calls.
SERVICES = ("user", "product", "order", "notification", "gateway")


async def start(name: str) -> tuple[asyncio.subprocess.Process, str]:
    module = "gateway" if name == "gateway" else f"services.{name}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    if not line:
        raise SystemExit(f"{name} exited before listening (see its log above)")
    return process, json.loads(line)["listening"]


def banner(addresses: dict[str, str]) -> str:
    gateway = addresses["gateway"]
    lines = ["", "shop mesh is up (Ctrl-C stops it):"]
    lines += [
        f"  {name:<13} {'http' if name == 'gateway' else 'grpc'}://{address}"
        for name, address in addresses.items()
    ]
    lines += [
        "",
        "try (Connect JSON through the gateway):",
        f"  curl -X POST http://{gateway}/shop.user.v1.UserService/CreateUser \\",
        "      -H 'content-type: application/json' \\",
        '      -d \'{"email": "ann@example.com", "displayName": "Ann"}\'',
        "",
        "everything but sign-up and the catalogue needs a token; for the user id above:",
        "  TOKEN=$(make -s token USER_ID=usr_...)       # ROLES=admin for product writes",
        f'  curl http://{gateway}/v1/users/usr_... -H "Authorization: Bearer $TOKEN"',
        "",
    ]
    return "\n".join(lines)


async def main() -> int:
    # The development signing key, made once before any process needs it.
    from services.common.auth import AuthSettings

    data_dir = Path(os.environ.get("DATA_DIR", "./var"))
    AuthSettings.from_env(data_dir)
    if os.environ.get("TLS_MODE", "mtls") != "plaintext" and not os.environ.get("TLS_CA_FILE"):
        from services.common.tls import SERVICE, dev_pki

        # The development CA, and a certificate to call the services with by hand.
        dev_pki(Path(os.environ.get("TLS_DIR", str(data_dir / "dev-pki"))), "cli", SERVICE)
    processes: dict[str, asyncio.subprocess.Process] = {}
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    exit_code = 0
    try:
        addresses = {}
        for name in SERVICES:
            processes[name], addresses[name] = await start(name)
        print(banner(addresses), flush=True)
        waiters = {asyncio.create_task(p.wait()): n for n, p in processes.items()}
        stop_task = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait([stop_task, *waiters], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in waiters:
                print(
                    f"{waiters[task]} exited with {task.result()}; stopping the mesh",
                    file=sys.stderr,
                )
                exit_code = 1
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
    return exit_code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
