(function () {
  function record(message) {
    var body = document.body;
    var previous = body.getAttribute("data-errors");
    body.setAttribute("data-errors", (previous ? previous + " | " : "") + String(message));
  }
  window.onerror = function (message) { record(message); };
  window.addEventListener("unhandledrejection", function (event) { record(event.reason); });
  var original = console.error;
  console.error = function () {
    record(Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
})();
