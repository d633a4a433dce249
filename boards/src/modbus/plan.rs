//! Which requests read a set of points: points of one unit and table that
//! lie close together share one read, so a meter's 50 registers cost one or
//! two round trips per period instead of 50. Pure planning, no I/O.

use super::config::Table;

/// One point to read: `width` registers (or bits) from `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    pub unit: u8,
    pub table: Table,
    pub address: u16,
    pub width: u16,
}

/// One request, and which of the wanted points it answers: `(index into
/// the wants, offset of its first register in the reply)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub unit: u8,
    pub table: Table,
    pub address: u16,
    pub count: u16,
    pub members: Vec<(usize, u16)>,
}

/// The protocol's limit on bits per read (FC01/02).
pub const MAX_BITS: u16 = 2000;

/// Plans the reads for `wants`: sorted by unit, table and address; a point
/// joins the read before it when the read stays within `max_registers`
/// (bit tables: [`MAX_BITS`]) and skips at most `max_gap` unwanted ones.
pub fn plan(wants: &[Want], max_registers: u16, max_gap: u16) -> Vec<Read> {
    let mut order: Vec<usize> = (0..wants.len()).collect();
    order.sort_by_key(|&i| (wants[i].unit, wants[i].table, wants[i].address));
    let mut reads: Vec<Read> = Vec::new();
    for i in order {
        let w = wants[i];
        let end = u32::from(w.address) + u32::from(w.width);
        let limit = u32::from(if w.table.is_bits() { MAX_BITS } else { max_registers });
        if let Some(r) = reads.last_mut() {
            let read_end = u32::from(r.address) + u32::from(r.count);
            let joins = r.unit == w.unit
                && r.table == w.table
                && u32::from(w.address) <= read_end + u32::from(max_gap)
                && end.max(read_end) - u32::from(r.address) <= limit;
            if joins {
                r.count = (end.max(read_end) - u32::from(r.address)) as u16;
                r.members.push((i, w.address - r.address));
                continue;
            }
        }
        reads.push(Read {
            unit: w.unit,
            table: w.table,
            address: w.address,
            count: w.width,
            members: vec![(i, 0)],
        });
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn want(unit: u8, table: Table, address: u16, width: u16) -> Want {
        Want { unit, table, address, width }
    }

    #[test]
    fn a_meter_s_fifty_registers_cost_one_read() {
        let wants: Vec<Want> = (0..25).map(|i| want(1, Table::Holding, 100 + 2 * i, 2)).collect();
        let reads = plan(&wants, 125, 0);
        assert_eq!(reads.len(), 1);
        assert_eq!((reads[0].address, reads[0].count, reads[0].members.len()), (100, 50, 25));
    }

    #[test]
    fn units_tables_gaps_and_the_size_limit_split_reads() {
        let wants = [
            want(1, Table::Holding, 0, 1),
            want(1, Table::Holding, 5, 2),  // gap of 4: joins with max_gap 4
            want(1, Table::Holding, 20, 1), // gap of 13: a new read
            want(2, Table::Holding, 0, 1),  // another unit
            want(1, Table::Input, 0, 1),    // another table
            want(1, Table::Holding, 140, 1),
            want(1, Table::Holding, 21, 4),
        ];
        let reads = plan(&wants, 125, 4);
        let shape: Vec<_> = reads.iter().map(|r| (r.unit, r.table, r.address, r.count)).collect();
        assert_eq!(
            shape,
            vec![
                (1, Table::Holding, 0, 7),
                (1, Table::Holding, 20, 5),
                (1, Table::Holding, 140, 1),
                (1, Table::Input, 0, 1),
                (2, Table::Holding, 0, 1),
            ]
        );
        assert_eq!(reads[1].members, vec![(2, 0), (6, 1)]);
        // 125 registers at most: a point at 122 spanning 4 registers no longer fits one starting at 0.
        let reads = plan(&[want(1, Table::Input, 0, 1), want(1, Table::Input, 122, 4)], 125, 200);
        assert_eq!(reads.len(), 2);
    }

    proptest! {
        /// Every point is read exactly once, entirely, by a read within the limits.
        #[test]
        fn every_point_is_covered_once_within_limits(
            points in proptest::collection::vec((1u8..4, 0usize..4, 0u16..300, 1usize..4), 0..60),
            max_registers in 4u16..=125,
            max_gap in 0u16..20,
        ) {
            let tables = [Table::Coil, Table::Discrete, Table::Holding, Table::Input];
            let wants: Vec<Want> = points
                .iter()
                .map(|&(u, t, a, w)| {
                    let table = tables[t];
                    let width = if table.is_bits() { 1 } else { [1, 2, 4][w - 1] };
                    want(u, table, a, width)
                })
                .collect();
            let reads = plan(&wants, max_registers, max_gap);
            let mut seen = vec![0; wants.len()];
            for r in &reads {
                let limit = if r.table.is_bits() { MAX_BITS } else { max_registers };
                prop_assert!(r.count <= limit);
                for &(i, offset) in &r.members {
                    seen[i] += 1;
                    let w = wants[i];
                    prop_assert_eq!((w.unit, w.table), (r.unit, r.table));
                    prop_assert_eq!(r.address + offset, w.address);
                    prop_assert!(offset + w.width <= r.count);
                }
            }
            prop_assert!(seen.iter().all(|&n| n == 1));
        }
    }
}
