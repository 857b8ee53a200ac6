export { JwtProxyMetrics, METRIC_PREFIX, type ConnectionCounts, type JwtProxyMetricsOptions, type MetricSnapshot } from './metrics.js';
export {
  certificateObserver,
  instrumentKeyServer,
  instrumentNonceStore,
  instrumentPrivateKeySource,
  type CertificateObserver,
  type ComponentLabels,
  type KeyServerObserver,
} from './instrument.js';
export { Readiness, type CheckResult, type ReadinessCheck, type ReadinessOptions, type ReadinessReport } from './readiness.js';
export { ADMIN_SERVER_LIMITS, startAdminServer, type AdminServerOptions, type RunningAdminServer } from './server.js';
export { reasonLabel, statusClassLabel } from './labels.js';
