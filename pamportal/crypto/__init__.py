"""Pure cryptographic formats (no Django): certificates now; MEK, licence and bundles later."""
