"""``python -m sandbox``: prints which isolation layers are active on this machine."""

from sandbox import isolation_layers, run_program

if __name__ == "__main__":
    for layer, state in isolation_layers().items():
        print(f"{layer:13s} {state}")
    result = run_program("def check():\n    return 'ok'\n")
    print(f"{'self_test':13s} {'passed' if result.ok and result.value == 'ok' else 'FAILED: ' + str(result.error)}")
