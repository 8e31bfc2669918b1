from lvm_gateway.native import guard

guard()  # before any compiled module is imported: a stale build is bypassed (native.py)
