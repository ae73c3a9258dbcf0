//! `sensorlink query` and `sensorlink stats`.
