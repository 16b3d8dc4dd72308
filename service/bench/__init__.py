"""`plexserve bench`: a client-side load generator for a running server, and its reports.

Who calls this: `service/cli.py` (`plexserve bench`) through `service.bench.command.run_command`,
and the scripts under `bench/`. Nothing here imports TensorFlow, for either protocol: a bench
process (and every load process it spawns) holds only numpy, grpc and the generated protocol
stubs (TF Serving's are plexserve's own, protos/tfserving/).

Modules, in the order a run uses them:
  options         flags, durations ("500ms", "2s", "1m"), the validated BenchSettings
  protocols       the client side of a wire protocol: metadata, request building, one call
  tfserving       the TF Serving client, imported only for --protocol tfserving
  inputs          request data from the model's metadata (random, zeros, or a JSON file)
  load            the closed and open load loops, on the event loop's clock, recording raw times
  stats           raw records -> per-step figures (percentiles over merged raw latencies)
  server_metrics  Prometheus scrapes before and after a step -> server-side means
  workers         where the load runs: this process, or N spawned processes
  command         the orchestration of one run: steps, progress line, table, files
  report          table rows, JSON, CSV, --compare
  plot            latency percentiles against throughput (matplotlib, optional)
"""


class BenchError(Exception):
    """A problem the user can fix (bad flag, unreachable server, unknown model); exit status 2."""
