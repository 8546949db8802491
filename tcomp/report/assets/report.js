(function(){
  function cellValue(td){var t=td.textContent.trim();var v=parseFloat(t);return isNaN(v)||!/^[-+0-9.]/.test(t)?t.toLowerCase():v;}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
        var dir=th.dataset.dir==='asc'?-1:1;th.dataset.dir=dir>0?'asc':'desc';
        rows.sort(function(a,b){var x=cellValue(a.cells[col]),y=cellValue(b.cells[col]);
          if(typeof x!==typeof y){x=String(x);y=String(y);}return x<y?-dir:x>y?dir:0;});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  var svg=document.getElementById('graph-svg'),detail=document.getElementById('node-detail');
  var boxes=svg?svg.querySelectorAll('g.gnode'):[];
  boxes.forEach(function(g){g.addEventListener('click',function(){
    boxes.forEach(function(o){o.classList.remove('pinned');});g.classList.add('pinned');
    detail.textContent=g.querySelector('title').textContent;});});
  var focus=document.getElementById('focus');
  if(focus&&svg){focus.addEventListener('change',function(){svg.classList.toggle('focus',focus.checked);});}
  var passes=document.querySelectorAll('#pass-table tbody tr').length;
  var back=document.querySelectorAll('#pass-table tr.status-rolled_back').length;
  var att=svg?svg.querySelectorAll('g.gnode.attention').length:0;
  var rew=svg?svg.querySelectorAll('g.gnode.rewritten').length:0;
  var s=document.getElementById('js-summary');
  s.textContent=passes+' passes ('+back+' rolled back), '+att+' attention sites highlighted, '+rew+
    ' boxes with rewritten nodes, '+boxes.length+' boxes drawn';
  s.dataset.passes=passes;s.dataset.attention=att;s.dataset.boxes=boxes.length;
  document.documentElement.dataset.rendered='1';
})();
