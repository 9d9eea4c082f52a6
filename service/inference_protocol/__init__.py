"""The Open Inference Protocol (KServe v2 REST, as Triton speaks it): ``messages`` parses requests
and builds responses, ``routes`` serves them on the server's batcher."""
