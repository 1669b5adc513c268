package targets

// DistinctSecretName is distinctSecretName, for the external tests.
var DistinctSecretName = distinctSecretName
