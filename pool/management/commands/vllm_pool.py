"""`python manage.py vllm_pool`: run this host's vLLM servers, as defined in the admin.

Each enabled PoolServer row of this host (or of no host) becomes one `vllm serve` process,
restarted with exponential backoff when it exits, and one backend row of the same name: in the
pool once the server answers `/health`, out of it from its exit until it answers again, and
out on Ctrl-C / SIGTERM, which stops every server. `--simulate` runs `python -m simulator` in
each server's place, with the same supervision and registration (no GPU, no vllm).
"""
from __future__ import annotations

import socket

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from config.run import RestartPolicy, Supervisor
from pool.launch import simulator_argv, vllm_argv, vllm_command, vllm_env
from pool.models import PoolServer
from pool.services import backend_unregister
from pool.supervisor import PoolChild, say

NO_VLLM = ("vllm is not installed here: on a GPU host run `pip install -r requirements-gpu.txt`, "
           "or pass --simulate to run the simulator in each server's place")
# vLLM finishes its running requests on SIGTERM; a simulator has none worth waiting for.
STOP_GRACE_S = {"vllm": 30.0, "simulator": 5.0}


class Command(BaseCommand):
    help = "Run this host's vLLM servers from the admin's pool definitions, registered as backends."

    def add_arguments(self, parser):
        parser.add_argument("--simulate", action="store_true",
                            help="run the simulator in each server's place (no GPU, no vllm)")
        parser.add_argument("--host-label", default=socket.gethostname(),
                            help="run the servers whose host is this (default: this host name)")
        parser.add_argument("--advertise-host",
                            help="the address the gateway reaches the servers at (default: this "
                                 "host's FQDN; 127.0.0.1 with --simulate)")
        parser.add_argument("--bind-host",
                            help="the address the servers listen on (default: 0.0.0.0; "
                                 "127.0.0.1 with --simulate)")
        parser.add_argument("--backoff-max-s", type=float, default=RestartPolicy.max_s,
                            help="the longest wait between restarts of a crashing server")

    def handle(self, *args, simulate: bool, host_label: str, advertise_host: str | None,
               bind_host: str | None, backoff_max_s: float, **options) -> None:
        vllm = None if simulate else vllm_command()
        if not simulate and vllm is None:
            raise CommandError(NO_VLLM)
        servers = servers_for(host_label)
        advertise = advertise_host or ("127.0.0.1" if simulate else socket.getfqdn())
        bind = bind_host or ("127.0.0.1" if simulate else "0.0.0.0")
        policy = RestartPolicy(max_s=backoff_max_s)
        children = [
            PoolChild(backend=s.name, model=s.served_name, max_concurrency=s.max_num_seqs,
                      base_url=f"http://{advertise}:{s.port}",
                      argv=(simulator_argv(s, bind_host=bind) if simulate
                            else vllm_argv(s, vllm=vllm, bind_host=bind)),
                      env=vllm_env(s), policy=policy,
                      stop_grace_s=STOP_GRACE_S["simulator" if simulate else "vllm"])
            for s in servers
        ]
        supervise(children)


def servers_for(host_label: str) -> list[PoolServer]:
    """The enabled servers of this host; the backends of its disabled ones are taken out, in
    case an earlier run left them in."""
    mine = PoolServer.objects.filter(Q(host=host_label) | Q(host=""))
    for name in mine.filter(enabled=False).values_list("name", flat=True):
        backend_unregister(name=name)
    servers = list(mine.filter(enabled=True).order_by("port"))
    if not servers:
        raise CommandError(f"no enabled pool servers for host {host_label!r}: add them in the "
                           "admin under vLLM pool > Pool servers (or pass --host-label)")
    ports = [s.port for s in servers]
    if len(set(ports)) != len(ports):
        raise CommandError(f"two enabled pool servers of host {host_label!r} share a port: "
                           + ", ".join(f"{s.name}:{s.port}" for s in servers))
    return servers


def supervise(children: list[PoolChild]) -> None:
    """Start the servers and keep them (and their backend rows) up until SIGTERM / Ctrl-C;
    then take every backend out before stopping the servers behind it."""
    sup = Supervisor()
    try:
        for child in children:
            if not sup.stopping:
                sup.start(child)
        say(f"supervising {len(children)} server(s); Ctrl-C stops them")
        sup.run()
    finally:
        for child in children:
            child.take_out()
        sup.stop(children)
        say("stopped")
