"""Generated gRPC stubs of ``proto/vecstore/v1/vecstore.proto`` (``make proto``); do not edit."""
