"""A mitmdump script for the benchmarks: sends every request to the bench upstream as soon as its
headers arrive (before a streamed body starts), as the gateway's --upstream does."""

from mitmproxy import ctx, http


def load(loader):
    loader.add_option("bench_upstream_port", int, 0, "Port of the bench upstream on 127.0.0.1.")


def requestheaders(flow: http.HTTPFlow) -> None:
    flow.request.scheme = "http"
    flow.request.data.host = "127.0.0.1"
    flow.request.data.port = ctx.options.bench_upstream_port
