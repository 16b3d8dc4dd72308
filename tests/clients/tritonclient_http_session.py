"""Drives a plexserve server's HTTP port with tritonclient.http (run as a separate process: its
gevent hub must stay in one thread, which the test process's server threads would break).

usage: python tritonclient_http_session.py HOST:PORT INPUTS.npz OUTPUTS.npz -> prints a JSON report
INPUTS.npz holds arrays named "MODEL/INPUT"; OUTPUTS.npz receives "MODEL/OUTPUT/ENCODING" for
every output, once with binary tensors and once with JSON tensors.
"""

import json
import sys
from collections import defaultdict

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

address, inputs_path, outputs_path = sys.argv[1:4]
client = triton.InferenceServerClient(address)
report = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "server": client.get_server_metadata(),
    "model_ready": client.is_model_ready("multi_task"),
    "metadata": client.get_model_metadata("multi_task"),
    "config": client.get_model_config("multi_task"),
}

requests = defaultdict(dict)
with np.load(inputs_path, allow_pickle=True) as data:
    for key in data.files:
        model, name = key.split("/")
        requests[model][name] = data[key]

outputs = {}
for model, arrays in requests.items():
    metadata = client.get_model_metadata(model)
    for encoding, binary in (("binary", True), ("json", False)):
        inputs = []
        for name, array in arrays.items():
            tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array, binary_data=binary)
            inputs.append(tensor)
        requested = [
            triton.InferRequestedOutput(o["name"], binary_data=binary) for o in metadata["outputs"]
        ]
        result = client.infer(model, inputs, outputs=requested, request_id=f"http-{model}")
        response = result.get_response()
        report.setdefault("ids", {})[model] = response["id"]
        for output in response["outputs"]:
            outputs[f"{model}/{output['name']}/{encoding}"] = result.as_numpy(output["name"])
np.savez(outputs_path, **outputs)

report["statistics"] = client.get_inference_statistics("multi_task")
try:
    client.infer("no_such_model", inputs)
except InferenceServerException as error:
    report["error"] = {"status": error.status(), "message": error.message()}
client.close()
print(json.dumps(report))
