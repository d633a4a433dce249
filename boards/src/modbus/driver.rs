//! A channel that reads (and, for coils and holding registers, writes) one
//! point through its link. Faults are the channel's quality, not the agent's.

use std::time::Duration;

use proto::sample::Value;

use super::codec;
use super::config::{PointSpec, Table};
use super::link::{LinkHandle, Links};
use super::plan::Want;
use super::wire::Request;
use crate::driver::{Driver, DriverError};

pub struct Modbus {
    spec: PointSpec,
    link: Option<LinkHandle>,
}

impl Modbus {
    pub fn new(spec: &PointSpec, links: &Links) -> Self {
        Modbus { spec: spec.clone(), link: links.get(&spec.link).cloned() }
    }

    fn link(&self) -> Result<&LinkHandle, DriverError> {
        self.link
            .as_ref()
            .ok_or_else(|| DriverError::Invalid(format!("no [[modbus]] link is named {:?}", self.spec.link)))
    }

    fn want(&self) -> Result<Want, DriverError> {
        let point = self.spec.point().map_err(DriverError::Invalid)?;
        Ok(Want {
            unit: self.spec.unit,
            table: point.table,
            address: point.address,
            width: self.spec.width(point.table),
        })
    }
}

fn bad(reason: String) -> DriverError {
    DriverError::Bad { value: None, reason }
}

impl Driver for Modbus {
    fn read(&mut self, _t: Duration) -> Result<Value, DriverError> {
        let want = self.want()?;
        let raw = self.link()?.read(want).map_err(bad)?;
        codec::decode(&self.spec, &raw).map_err(bad)
    }

    fn write(&mut self, value: &Value) -> Result<(), DriverError> {
        let want = self.want()?;
        let request = match want.table {
            Table::Coil => Request::WriteCoil {
                address: want.address,
                value: codec::encode_bit(value).map_err(DriverError::Invalid)?,
            },
            Table::Holding => Request::WriteRegisters {
                address: want.address,
                values: codec::encode_registers(&self.spec, value).map_err(DriverError::Invalid)?,
            },
            _ => return Err(DriverError::ReadOnly),
        };
        self.link()?.write(want.unit, request).map_err(bad)?;
        Ok(())
    }

    fn writable(&self) -> bool {
        self.spec.point().is_ok_and(|p| p.table.writable()) && self.spec.bit.is_none()
    }
}
